"""Adversarial hard negatives for the visual model: a forgery policy trained against the detector (the SLADD
idea, Chen et al. 2022), alternated with detector updates, and the detector's robustness to PGD.

The generator is a policy network over the choices a face forgery makes: which region is blended
(whole face, eyes, nose, mouth), how strongly, how large a colour mismatch, how large a scale
mismatch and which post-processing. Given an authentic face crop (its trunk features), it samples one
choice of each; the forgery is then synthesised (a self-blend of the crop with a jittered copy of
itself, `training.visual_v2`) and the detector's loss on it (BCE against "fake") is the policy's
reward, learnt with REINFORCE and a running baseline: it learns which forgeries the detector misses.

The robustness loop alternates: policy steps, then detector steps on the policy's forgeries, the
training set's fakes and authentic crops, with authentic accuracy held as a constraint (a penalty
whenever the authentic crops' mean P(fake) rises above its value before the loop). As in
`training.continual`, only `classify` (embedding layer and head) learns over the frozen trunk.

`spectrashield adversarial --bench <manifest> --cross <manifest> --out DIR` reports, before and after:
clean AUC in-distribution and cross-generator, the policy's attack success rate (its forgeries scored
below 0.5), and PGD robustness (L-infinity, a few budgets) of the fakes. It publishes nothing: the numbers
decide whether it pays (see README).
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from models import load_version
from models.compression import CompressionResilientDetector
from pipeline.config import PipelineConfig
from pipeline.tensors import images_to_tensor
from training.continual import command_line, crop_features, set_trainable, write_report
from training.features import load_manifest_data
from training.visual_v2 import crop_files, face_mask, jitter_copy

# The action space: one choice per head. Every choice is a real manipulation: a null one (no colour change at
# full scale, or a faint blend) would let the policy "win" with forgeries that are the authentic crop itself
# (seen: with colour 0 and strength 0.25 allowed, its attack success rose to 1.0 while the detector degraded).
REGIONS = ("face", "eyes", "nose", "mouth")
STRENGTHS = (0.5, 0.75, 1.0)
COLOUR = (0.5, 1.0, 1.5)  # scale of the jittered copy's colour, sharpness and position change
SCALE = (1.0, 1.03, 1.06)
POST = ("none", "blur", "jpeg60")
HEADS = {"region": REGIONS, "strength": STRENGTHS, "colour": COLOUR, "scale": SCALE, "post": POST}
# Sub-regions of an aligned crop: (centre x, centre y, half width, half height), fractions of the side.
PARTS = {"eyes": (0.5, 0.40, 0.30, 0.09), "nose": (0.5, 0.55, 0.10, 0.14), "mouth": (0.5, 0.73, 0.18, 0.08)}


def region_mask(region: str, size: int, rng: np.random.Generator) -> np.ndarray:
    if region == "face":
        return face_mask(size, rng)
    cx, cy, hw, hh = PARTS[region]
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(mask, (int(cx * size), int(cy * size)), (int(hw * size), int(hh * size)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), size * 0.03)


def forge(crop: np.ndarray, action: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """One forgery of an authentic crop (H, W, 3) uint8 as the action says."""
    size = crop.shape[0]
    mask = region_mask(REGIONS[action["region"]], size, rng) * STRENGTHS[action["strength"]]
    source = jitter_copy(crop, rng)
    colour = COLOUR[action["colour"]]
    source = crop.astype(np.float32) + colour * (source - crop.astype(np.float32))
    scale = SCALE[action["scale"]]
    if scale != 1.0:
        m = cv2.getRotationMatrix2D((size / 2, size / 2), 0.0, scale)
        source = cv2.warpAffine(source, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = np.clip(mask[..., None] * source + (1 - mask[..., None]) * crop.astype(np.float32), 0, 255).astype(np.uint8)
    post = POST[action["post"]]
    if post == "blur":
        out = cv2.GaussianBlur(out, (0, 0), 0.8)
    elif post == "jpeg60":
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 60])
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else out
    return out


class ForgeryPolicy(nn.Module):
    """Trunk features of an authentic crop -> one categorical distribution per choice."""

    def __init__(self, features: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(options)) for name, options in HEADS.items()})

    def forward(self, streams: torch.Tensor) -> dict[str, torch.distributions.Categorical]:
        h = self.body(streams)
        return {name: torch.distributions.Categorical(logits=head(h)) for name, head in self.heads.items()}


def trunk(model: CompressionResilientDetector, crops: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`training.continual.crop_features` as tensors (both streams' features, the DAE error feature)."""
    streams, error = crop_features(model, crops)
    return torch.from_numpy(streams), torch.from_numpy(error)


def crop_logits(model: CompressionResilientDetector, crops: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.classify(*trunk(model, crops))[0].numpy()


@dataclass(frozen=True)
class LoopParams:
    rounds: int = 30
    batch: int = 32
    policy_steps: int = 2
    detector_steps: int = 5
    policy_lr: float = 1e-2
    detector_lr: float = 1e-3
    entropy: float = 0.01
    authentic_weight: float = 10.0
    seed: int = 0


def sample_forgeries(policy: ForgeryPolicy, model: CompressionResilientDetector, authentic: np.ndarray,
                     rng: np.random.Generator, batch: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(forged crops, the actions' summed log-probability per crop, mean entropy) for a batch of authentic crops."""
    pick = authentic[rng.choice(len(authentic), min(batch, len(authentic)), replace=False)]
    streams, _ = trunk(model, pick)
    dists = policy(streams)
    actions = {name: d.sample() for name, d in dists.items()}
    forged = np.stack([forge(c, {n: int(a[i]) for n, a in actions.items()}, rng) for i, c in enumerate(pick)])
    logp = sum(d.log_prob(actions[name]) for name, d in dists.items())
    entropy = sum(d.entropy() for d in dists.values()).mean()
    return forged, logp, entropy


def robustness_loop(
    model: CompressionResilientDetector, authentic: np.ndarray, fakes: np.ndarray, p: LoopParams,
) -> tuple[CompressionResilientDetector, ForgeryPolicy, list[dict[str, float]]]:
    """Alternate policy (REINFORCE on the detector's loss) and detector steps; the trunk stays frozen."""
    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    detector = copy.deepcopy(model).eval()
    params = set_trainable(detector, "fuse")
    policy = ForgeryPolicy(detector.fuse[0].in_features)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=p.policy_lr)
    detector_opt = torch.optim.Adam(params, lr=p.detector_lr)
    auth_streams, auth_error = trunk(detector, authentic)
    fake_streams, fake_error = trunk(detector, fakes)
    with torch.no_grad():
        ceiling = torch.sigmoid(detector.classify(auth_streams, auth_error)[0]).mean()  # the constraint
    baseline, history = 0.0, []
    for _ in range(p.rounds):
        for _ in range(p.policy_steps):
            forged, logp, entropy = sample_forgeries(policy, detector, authentic, rng, p.batch)
            with torch.no_grad():
                reward = F.binary_cross_entropy_with_logits(
                    detector.classify(*trunk(detector, forged))[0], torch.ones(len(forged)), reduction="none")
            baseline = 0.9 * baseline + 0.1 * float(reward.mean())
            loss = -((reward - baseline) * logp).mean() - p.entropy * entropy
            policy_opt.zero_grad()
            loss.backward()
            policy_opt.step()
        forged_streams, forged_error = trunk(detector, forged)
        for _ in range(p.detector_steps):
            a = rng.choice(len(authentic), min(p.batch, len(authentic)), replace=False)
            f = rng.choice(len(fakes), min(p.batch, len(fakes)), replace=False)
            logits_a = detector.classify(auth_streams[a], auth_error[a])[0]
            logits_f = detector.classify(torch.cat([fake_streams[f], forged_streams]),
                                         torch.cat([fake_error[f], forged_error]))[0]
            loss = 0.5 * F.binary_cross_entropy_with_logits(logits_a, torch.zeros(len(a))) + \
                0.5 * F.binary_cross_entropy_with_logits(logits_f, torch.ones(len(logits_f)))
            loss = loss + p.authentic_weight * F.relu(torch.sigmoid(logits_a).mean() - ceiling)
            detector_opt.zero_grad()
            loss.backward()
            detector_opt.step()
        history.append({"policy_reward": float(reward.mean()), "detector_loss": float(loss.detach())})
    for q in detector.parameters():
        q.requires_grad_(False)
    return detector.eval(), policy.eval(), history


def attack_success(policy: ForgeryPolicy, model: CompressionResilientDetector, authentic: np.ndarray,
                   n: int, seed: int) -> float:
    """Share of the policy's forgeries of `authentic` crops that `model` scores below 0.5."""
    with torch.no_grad():
        forged, _, _ = sample_forgeries(policy, model, authentic, np.random.default_rng(seed), n)
    return float((crop_logits(model, forged) < 0).mean())


def pgd_success(model: CompressionResilientDetector, fakes: np.ndarray, eps: float, steps: int = 10) -> float:
    """Share of the fakes `model` calls fake that an L-infinity PGD of budget `eps` (of 1) turns to "real"."""
    x0 = images_to_tensor(fakes)
    with torch.no_grad():
        caught = model(x0).logit > 0
    if not caught.any():
        return float("nan")
    x0 = x0[caught]
    x = x0.clone()
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        x.requires_grad_(True)
        logit = model(x).logit
        grad, = torch.autograd.grad(logit.sum(), x)
        with torch.no_grad():
            x = (x - alpha * grad.sign()).clamp(x0 - eps, x0 + eps).clamp(0, 1)
    with torch.no_grad():
        return float((model(x).logit < 0).float().mean())


def clean_auc(model: CompressionResilientDetector, crops: Sequence[Any]) -> float:
    """File-level AUC (mean crop logit per file) over `training.visual_v2.CropFile`s."""
    labels = [f.target for f in crops]
    scores = [float(crop_logits(model, f.crops).mean()) for f in crops]
    return float(roc_auc_score(labels, scores))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spectrashield adversarial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="in-distribution manifest (train, test splits)")
    parser.add_argument("--cross", type=Path, required=True, help="a cross-generator manifest (every split: test)")
    parser.add_argument("--base", default="v2")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=LoopParams.rounds)
    parser.add_argument("--pgd-eps", type=float, nargs="+", default=[1 / 255, 2 / 255, 4 / 255])
    parser.add_argument("--pgd-files", type=int, default=60, help="test fakes attacked with PGD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_version("compression_resilient", args.base, root=args.weights_dir).model.eval()
    decode = PipelineConfig().decode
    bench = load_manifest_data(args.bench, splits=("train", "val", "test"), decode_config=decode, progress=False)
    cross = load_manifest_data(args.cross, splits=("train", "val", "fusion", "test"), decode_config=decode,
                               progress=False)
    train = crop_files(bench, "train", "bench", 4) + crop_files(bench, "val", "bench", 4)
    authentic = np.concatenate([f.crops for f in train if f.target == 0])
    fakes = np.concatenate([f.crops for f in train if f.target == 1])
    test = crop_files(bench, "test", "bench", 4)
    cross_files = [f for s in ("train", "val", "fusion", "test") for f in crop_files(cross, s, "cross", 4)]
    test_authentic = np.concatenate([f.crops[:1] for f in test if f.target == 0])
    test_fakes = np.concatenate([f.crops[:1] for f in test if f.target == 1])[: args.pgd_files]

    detector, policy, history = robustness_loop(model, authentic, fakes, LoopParams(rounds=args.rounds, seed=args.seed))
    report: dict[str, Any] = {"base": args.base, "rounds": args.rounds, "train_crops": {
        "authentic": len(authentic), "fake": len(fakes)}, "history": history}
    for name, m in (("before", model), ("after", detector)):
        report[name] = {
            "in_distribution_auc": clean_auc(m, test), "cross_generator_auc": clean_auc(m, cross_files),
            "policy_attack_success": attack_success(policy, m, test_authentic, len(test_authentic), args.seed),
            "authentic_mean_p_fake": float(torch.sigmoid(torch.from_numpy(crop_logits(m, test_authentic))).mean()),
            "pgd_success": {f"{eps * 255:.0f}/255": pgd_success(m, test_fakes, eps) for eps in args.pgd_eps},
        }
    command = command_line("adversarial", argv)
    lines = [(f"Adversarial robustness loop on compression_resilient/{args.base} ({args.rounds} rounds; classify "
              f"learns, trunk frozen). Command: `{command}`"), "", "| | before | after |", "|---|---|---|"]
    for key in ("in_distribution_auc", "cross_generator_auc", "policy_attack_success", "authentic_mean_p_fake"):
        lines.append(f"| {key} | {report['before'][key]:.3f} | {report['after'][key]:.3f} |")
    for eps in report["before"]["pgd_success"]:
        lines.append(f"| PGD success at {eps} | {report['before']['pgd_success'][eps]:.3f} | "
                     f"{report['after']['pgd_success'][eps]:.3f} |")
    write_report(args.out, report, "\n".join(lines) + "\n")
