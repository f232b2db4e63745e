"""Train the four served models on a manifest and save each as a versioned, trained bundle.

Order matters: FastTriage, CompressionResilient and AVAlignment train on the `train` split
and report on `val`; Fusion then reads those trained branches' outputs on the `fusion`
split (which no branch trained on, so fusion learns how much to trust honest, held-out
branch scores) and fits its temperature on `val`. Every model sees its inputs through
`training.features`, which replays the deployments' conversions, so served == trained.

Targets (see each `train_*` function for the losses):

- triage: the clip `label` (its early exit must not settle audio/AV-only fakes as real);
- compression: `modality_labels.visual`, falling back to `label`;
- AV sync: in sync unless `modality_labels.av` says otherwise, plus self-supervised
  negatives (audio shifted 150-800 ms on the fly); offset: `meta.av_offset_ms` (ms, > 0 =
  audio leads) and the on-the-fly shifts; spoof: `modality_labels.audio`;
- fusion: `label`.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from models import (
    MODELS,
    AVAlignmentModel,
    CompressionResilientDetector,
    FastTriage,
    FusionConfig,
    FusionModel,
    build_fusion,
    modality_dims,
    save_bundle,
    weights_root,
)
from models.common import resize_to
from pipeline.av import lips_usable_at, run_av, served_audio
from pipeline.config import PipelineConfig, TriageConfig
from pipeline.fuse import fusion_batch
from pipeline.local import LocalPipeline
from pipeline.tensors import audio_to_tensor, images_to_tensor, lips_to_tensor, mouths_to_tensor
from pipeline.triage import run_triage
from pipeline.visual import run_visual
from training.features import (
    ClipArrays,
    ManifestData,
    load_manifest_data,
    load_pipeline,
    parse_versions,
    run_many,
)
from training.manifest import ManifestEntry

logger = logging.getLogger(__name__)

ModelName = Literal["fast_triage", "compression_resilient", "av_alignment", "fusion"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)  # also the dependency order
Preset = Literal["default", "test"]
PRESETS: tuple[str, ...] = get_args(Preset)

ORIGINAL_META_KEY = "original"  # manifest meta: path (relative to the manifest) of the uncompressed source
# manifest meta: A/V offset of an av_shift fake in ms, > 0 = the audio leads the picture (heard early),
# as `training.benchmark` writes it. The offset head learns this same sign, so a served `offset_ms`
# compares directly with the manifest's ground truth.
OFFSET_META_KEY = "av_offset_ms"


@dataclass(frozen=True)
class HParams:
    """Optimisation settings of one model; the `test` preset's values make a run take seconds."""

    epochs: int
    batch_size: int  # clips per batch (fusion: files)
    lr: float
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    clip_frames: int = 32  # triage: consecutive face crops per training sequence
    frame_loss_weight: float = 0.5  # triage: weight of the max-frame (multiple-instance) loss
    crops_per_clip: int = 8  # compression: face crops drawn per clip per epoch
    dae_epochs: int | None = None  # compression: denoising-autoencoder epochs first (None = epochs)
    augment_jpeg_prob: float = 0.3  # compression: classifier crops re-compressed with this probability
    window_s: float = 3.0  # av: seconds of audio and frames per training window
    shift_prob: float = 0.5  # av: chance an in-sync window becomes a shifted (out-of-sync) negative
    shift_ms: tuple[float, float] = (150.0, 800.0)  # av: range of |shift| for those negatives
    freeze_prob: float = 0.0  # av: chance an in-sync, unshifted window becomes a frozen-mouth negative
    sync_jitter_ms: float = 0.0  # av: an in-sync window that stays a positive has its audio moved by up to this
    reverb_prob: float = 0.0  # av: chance a training window's audio is heard in a synthetic room (`room_reverb`)
    input_noise: float = 0.0  # fusion: Gaussian noise on each feature, in that feature's std over the fit split
    freeze_frac: tuple[float, float] = (0.3, 0.7)  # av: share of that window's frames the mouth is held still
    offset_weight: float = 1.0  # av: weight of the offset regression loss
    modality_dropout: float = 0.2  # fusion: chance each present modality is hidden from a sample


HPARAMS: dict[tuple[str, str], HParams] = {
    ("fast_triage", "default"): HParams(epochs=10, batch_size=8, lr=1e-3),
    ("fast_triage", "test"): HParams(epochs=1, batch_size=4, lr=1e-3, clip_frames=8),
    ("compression_resilient", "default"): HParams(epochs=16, batch_size=8, lr=1e-3),  # 8: val AUC 0.874, 16: 0.935
    ("compression_resilient", "test"): HParams(epochs=1, batch_size=4, lr=1e-3, crops_per_clip=2),
    ("av_alignment", "default"): HParams(epochs=12, batch_size=8, lr=3e-4),
    ("av_alignment", "test"): HParams(epochs=1, batch_size=4, lr=1e-3, window_s=1.0),
    ("fusion", "default"): HParams(epochs=60, batch_size=32, lr=3e-3),
    ("fusion", "test"): HParams(epochs=3, batch_size=8, lr=3e-3),
}


@dataclass
class TrainResult:
    name: str
    path: Path  # the bundle directory
    metrics: dict[str, Any]  # validation scores, also in the card and config.json
    wall_s: float
    command: str


# ---- targets -------------------------------------------------------------------------------


def triage_target(entry: ManifestEntry) -> int:
    """FastTriage's target is the clip label, not the visual one: its early exit may only settle
    clips whose every modality it can vouch for, so audio/AV-only fakes must keep it unsure."""
    return entry.label


def visual_target(entry: ManifestEntry) -> int:
    """Is the picture manipulated? An audio- or sync-only fake has an authentic face."""
    return entry.modality_labels.visual if entry.modality_labels.visual is not None else entry.label


def sync_target(entry: ManifestEntry) -> int | None:
    """1 = lips and voice belong together; None = unknown (a fake whose AV label was not given)."""
    if entry.modality_labels.av is not None:
        return 1 - entry.modality_labels.av
    return 1 if entry.label == 0 else None


def spoof_target(entry: ManifestEntry) -> int | None:
    """1 = synthetic or spliced voice; None = unknown."""
    if entry.modality_labels.audio is not None:
        return entry.modality_labels.audio
    if entry.kind == "audio" or entry.label == 0:
        return entry.label
    return None


def offset_target_ms(entry: ManifestEntry) -> float | None:
    """A/V offset in ms (> 0 = audio leads): `meta.av_offset_ms` when given, 0 when in sync, else unknown."""
    if OFFSET_META_KEY in entry.meta:
        return float(entry.meta[OFFSET_META_KEY])
    return 0.0 if sync_target(entry) == 1 else None


# ---- shared helpers ------------------------------------------------------------------------


def seed_everything(seed: int, device: str) -> None:
    """Fixed seeds for torch and cuDNN; numpy randomness comes from per-item generators (`item_rng`)."""
    torch.manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Augmentation randomness per (seed, epoch, item): identical whatever the loader's worker count."""
    return np.random.default_rng([seed, epoch, index])


def binary_scores(labels: Sequence[int], probs: Sequence[float]) -> dict[str, float | int | None]:
    """Validation summary for cards: AUC (None with one class), accuracy at 0.5, log loss, Brier."""
    y = np.asarray(labels, int)
    p = np.clip(np.asarray(probs, float), 1e-7, 1 - 1e-7)
    if y.size == 0:
        return {"n": 0}
    return {
        "n": int(y.size),
        "auc": float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None,
        "accuracy": float(accuracy_score(y, (p >= 0.5).astype(int))),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
    }


def pos_weight(targets: Sequence[float], device: str) -> Tensor:
    """n_negative / n_positive, so a branch trained on a fake-heavy benchmark is not biased to 'fake'."""
    t = np.asarray(targets, float)
    pos, neg = float((t == 1).sum()), float((t == 0).sum())
    return torch.tensor(neg / pos if pos and neg else 1.0, device=device)


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Social-media style damage to a (H, W, 3) uint8 RGB crop: maybe downscale, JPEG, maybe noise."""
    out = crop
    h, w = crop.shape[:2]
    if rng.random() < 0.3:
        factor = rng.uniform(1.5, 3.0)
        small = cv2.resize(out, (max(int(w / factor), 8), max(int(h / factor), 8)), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    quality = int(rng.integers(15, 91))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if rng.random() < 0.5:
        noise = rng.normal(0.0, rng.uniform(1.0, 6.0), out.shape)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return out


def pick_frames(face_found: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k frame indices, preferring frames with a detected face (faceless crops are just the frame centre)."""
    candidates = np.flatnonzero(face_found)
    if candidates.size == 0:
        candidates = np.arange(face_found.size)
    return rng.choice(candidates, size=k, replace=candidates.size < k)


def data_parallel() -> tuple[int, int]:
    """(rank, world size) of the data-parallel group this process trains in; (0, 1) outside one.

    Under Ray Train (`spectrashield train --ray-address`) each worker sees a shard of every epoch's
    shuffled order and `_step` averages the gradients, so a step is local mode's step on the whole batch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, workers: int, collate: Callable) -> DataLoader:
    """Shuffled batches in an order fixed by (seed, epoch); data-parallel: this rank's share of each batch."""
    rank, world = data_parallel()
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if world > 1:  # local mode's batches (the same loader over item numbers), each split across the ranks
        batches = DataLoader(range(len(dataset)), batch_size=batch_size, shuffle=True, generator=generator,
                             collate_fn=list)
        mine = []
        for batch in batches:
            batch = batch + batch[: (-len(batch)) % world]  # a batch that does not split evenly: repeat its first items
            mine.append(batch[rank * len(batch) // world: (rank + 1) * len(batch) // world])
        return DataLoader(dataset, batch_sampler=mine, num_workers=workers, collate_fn=collate)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers, collate_fn=collate
    )


def _step(optimizer: torch.optim.Optimizer, loss: Tensor, params: Sequence[nn.Parameter], clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    world = data_parallel()[1]
    if world > 1:  # the ranks' gradients of their shards, averaged: every rank takes the same step
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
            p.grad /= world
    nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def _with_frames(data: ManifestData, split: str, kinds: Sequence[str]) -> list[int]:
    """Decodable entries of these kinds with at least one sampled frame."""
    return [i for i in data.indices(split) if data.entries[i].kind in kinds and data.peek(i)["n_frames"] > 0]


class EpochDataset(Dataset):
    """A dataset whose augmentation depends on the epoch, set before each pass."""

    def __init__(self, data: ManifestData, indices: Sequence[int], hp: HParams, seed: int) -> None:
        self.data, self.indices, self.hp, self.seed = data, list(indices), hp, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def rng(self, k: int) -> np.random.Generator:
        return item_rng(self.seed, self.epoch, k)


# ---- FastTriage ------------------------------------------------------------------------------


class TriageSequences(EpochDataset):
    """A random run of `clip_frames` consecutive face crops per video, flipped half the time."""

    def __getitem__(self, k: int) -> tuple[np.ndarray, float]:
        rng = self.rng(k)
        i = self.indices[k]
        crops = self.data.arrays(i).face_crops  # (T, H, W, 3)
        n = min(len(crops), self.hp.clip_frames)
        start = int(rng.integers(0, len(crops) - n + 1))
        seq = crops[start : start + n]
        if rng.random() < 0.5:
            seq = seq[:, :, ::-1]
        return np.ascontiguousarray(seq), float(triage_target(self.data.entries[i]))


def _collate_sequences(batch: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(seq) for seq, _ in batch)  # the shortest clip sets the batch's sequence length
    return np.stack([seq[:n] for seq, _ in batch]), np.array([y for _, y in batch], np.float32)


def sequences_to_tensor(frames: np.ndarray, device: str) -> Tensor:
    """(B, T, H, W, 3) uint8 -> (B, T, 3, H, W) in [0, 1], per frame exactly as the deployment converts."""
    b, t, h, w, c = frames.shape
    return images_to_tensor(frames.reshape(b * t, h, w, c), device).view(b, t, c, h, w)


def train_fast_triage(
    model: FastTriage, data: ManifestData, hp: HParams, *, seed: int, device: str, workers: int, progress: bool
) -> dict[str, Any]:
    """Clip BCE on the clip logit + multiple-instance BCE on the max frame logit (a fake clip has a
    fake frame, a real clip none), both class-balanced. Frame scores drive keyframe selection,
    so they must mean something even though labels are per clip."""
    train = _with_frames(data, "train", ("video",))
    if not train:
        raise ValueError("no decodable training videos in the train split")
    dataset = TriageSequences(data, train, hp, seed)
    weight = pos_weight([triage_target(data.entries[i]) for i in train], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    params = list(model.parameters())
    for epoch in tqdm(range(hp.epochs), desc="fast_triage", unit="epoch", disable=not progress):
        dataset.epoch = epoch
        model.train()
        for frames, y in loader(dataset, hp.batch_size, seed, epoch, workers, _collate_sequences):
            target = torch.from_numpy(y).to(device)
            out = model(sequences_to_tensor(frames, device))
            loss = F.binary_cross_entropy_with_logits(out.clip_logit, target, pos_weight=weight)
            frame_max = out.frame_logits.amax(dim=1)  # (B,)
            frame_loss = F.binary_cross_entropy_with_logits(frame_max, target, pos_weight=weight)
            loss = loss + hp.frame_loss_weight * frame_loss
            _step(optimizer, loss, params, hp.grad_clip)
    model.eval()
    val = _with_frames(data, "val", ("video",))
    probs = [run_triage(model, [data.arrays(i)], TriageConfig(), device)[0].branch.score for i in val]
    return {"split": "val", "target": "label", **binary_scores([triage_target(data.entries[i]) for i in val], probs)}


# ---- CompressionResilient ---------------------------------------------------------------------


class CropSamples(EpochDataset):
    """`crops_per_clip` face crops per clip per epoch.

    mode "classify": (crops, labels), crops flipped and re-compressed at random (`degrade`).
    mode "denoise": (inputs, targets) of real faces: a compressed copy's crop -> the original's
    crop at the same frame when the manifest links them (`meta.original`), otherwise a
    synthetically degraded crop -> the crop itself (left intact 20 % of the time, so clean
    faces map to themselves).
    """

    def __init__(
        self, data: ManifestData, indices: Sequence[int], hp: HParams, seed: int, mode: str,
        originals: dict[int, int] | None = None,
    ) -> None:
        super().__init__(data, indices, hp, seed)
        self.mode = mode
        self.originals = originals or {}

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(k)
        i = self.indices[k]
        arrays = self.data.arrays(i)
        idx = pick_frames(arrays.face_found, self.hp.crops_per_clip, rng)
        crops = arrays.face_crops[idx]  # (K, H, W, 3)
        if self.mode == "denoise":
            if i in self.originals:
                return crops, self.data.arrays(self.originals[i]).face_crops[idx]
            noisy = np.stack([degrade(c, rng) if rng.random() < 0.8 else c for c in crops])
            return noisy, crops
        flip = rng.random(len(crops)) < 0.5
        out = np.stack([
            degrade(c, rng) if rng.random() < self.hp.augment_jpeg_prob else c
            for c in np.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
        ])
        return out, np.full(len(crops), visual_target(self.data.entries[i]), np.float32)


def _collate_pairs(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a for a, _ in batch]), np.concatenate([b for _, b in batch])


def original_pairs(data: ManifestData, indices: Sequence[int]) -> dict[int, int]:
    """Real re-compressed entries -> their uncompressed original's entry, when frame grids match."""
    by_path = {Path(e.path): j for j, e in enumerate(data.entries)}
    pairs = {}
    for i in indices:
        entry = data.entries[i]
        source = entry.meta.get(ORIGINAL_META_KEY)
        if source is None or visual_target(entry) != 0:
            continue
        j = by_path.get(Path(source))
        if j is None or data.files[j] not in data.info or data.entries[j].compression != "none":
            continue
        if data.peek(j)["n_frames"] == data.peek(i)["n_frames"]:
            pairs[i] = j
    return pairs


def train_compression_resilient(
    model: CompressionResilientDetector, data: ManifestData, hp: HParams, settings: PipelineConfig,
    *, seed: int, device: str, workers: int, progress: bool,
) -> dict[str, Any]:
    """Two phases. (1) The DAE learns to restore real faces: MSE at `dae_size` from degraded (or
    linked re-compressed) crops to clean ones, so its error stays low on real faces whatever the
    compression. (2) With the DAE frozen (weights and BatchNorm statistics), the two streams and
    head learn class-balanced BCE per crop, with flips and random re-compression as augmentation."""
    train = _with_frames(data, "train", ("video", "image"))
    if not train:
        raise ValueError("no decodable training images or videos in the train split")
    real = [i for i in train if visual_target(data.entries[i]) == 0]
    pairs = original_pairs(data, real)
    size = (model.config.dae_size, model.config.dae_size)
    dae_params = list(model.dae.parameters())
    dae_epochs = hp.epochs if hp.dae_epochs is None else hp.dae_epochs
    dae_data = CropSamples(data, real, hp, seed, "denoise", pairs)
    dae_opt = torch.optim.AdamW(dae_params, lr=hp.lr, weight_decay=hp.weight_decay)
    for epoch in tqdm(range(dae_epochs if real else 0), desc="compression dae", unit="epoch", disable=not progress):
        dae_data.epoch = epoch
        model.dae.train()
        for inputs, targets in loader(dae_data, hp.batch_size, seed, epoch, workers, _collate_pairs):
            recon = model.dae(resize_to(images_to_tensor(inputs, device), size))
            loss = F.mse_loss(recon, resize_to(images_to_tensor(targets, device), size))
            _step(dae_opt, loss, dae_params, hp.grad_clip)

    for p in dae_params:
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    dataset = CropSamples(data, train, hp, seed + 1, "classify")
    weight = pos_weight([visual_target(data.entries[i]) for i in train], device)
    for epoch in tqdm(range(hp.epochs), desc="compression", unit="epoch", disable=not progress):
        dataset.epoch = epoch
        model.train()
        model.dae.eval()  # frozen: its BatchNorm statistics must stay those of real faces
        for crops, y in loader(dataset, hp.batch_size, seed + 1, epoch, workers, _collate_pairs):
            out = model(images_to_tensor(crops, device))
            loss = F.binary_cross_entropy_with_logits(out.logit, torch.from_numpy(y).to(device), pos_weight=weight)
            _step(optimizer, loss, params, hp.grad_clip)
    for p in dae_params:
        p.requires_grad_(True)
    model.eval()

    val = _with_frames(data, "val", ("video", "image"))
    probs, errors = [], {0: [], 1: []}
    for i in val:
        arrays = data.arrays(i)
        branch = run_visual(model, [arrays], [None], settings.visual, device)[0]
        probs.append(branch.score)
        errors[visual_target(data.entries[i])].append(branch.details["reconstruction_error"])
    return {
        "split": "val", "target": "visual", "crops": "evenly spaced (served videos use keyframes)",
        **binary_scores([visual_target(data.entries[i]) for i in val], probs),
        "dae_pairs": len(pairs), "dae_trained_on": len(real),
        "recon_error_real": float(np.mean(errors[0])) if errors[0] else None,
        "recon_error_fake": float(np.mean(errors[1])) if errors[1] else None,
    }


# ---- AVAlignment ------------------------------------------------------------------------------


def shift_window(
    arrays: ClipArrays, window_s: float, lead_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """A window of `window_s` seconds: (audio samples, frame indices, window start in clip time).

    The audio is taken `lead_s` seconds after the frames' window start, so it is heard `lead_s`
    early (leads the lips; negative = lags). It comes from real neighbouring audio when the clip
    is long enough, else the window's own audio is rotated (no silence gap to learn from).
    """
    sr = arrays.sample_rate
    ts = arrays.timestamps
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.1
    video_end = float(ts[-1]) + step
    audio_end = len(arrays.audio) / sr
    width = min(window_s, video_end, audio_end)
    n = max(int(round(width * sr)), 1)
    lo, hi = max(0.0, -lead_s), min(video_end, audio_end - lead_s) - width
    if hi >= lo:
        t0 = float(rng.uniform(lo, hi))
        a0 = max(int(round((t0 + lead_s) * sr)), 0)
        audio = arrays.audio[a0 : a0 + n]
    else:
        t0 = float(rng.uniform(0.0, max(min(video_end, audio_end) - width, 0.0)))
        a0 = int(round(t0 * sr))
        audio = np.roll(arrays.audio[a0 : a0 + n], -int(round(lead_s * sr)))
    audio = np.pad(audio, (0, n - len(audio)))
    frames = np.flatnonzero((ts >= t0 - 1e-6) & (ts < t0 + width - 1e-6))
    if len(frames) < 2:
        frames = np.arange(min(2, len(ts)))
    return audio.astype(np.float32), frames, t0


def room_reverb(
    audio: np.ndarray, sr: int, rng: np.random.Generator, rt60_s: tuple[float, float] = (0.15, 0.8),
    drr_db: tuple[float, float] = (-3.0, 12.0),
) -> np.ndarray:
    """`audio` heard in a synthetic room, same length and RMS: the direct sound plus a tail of Gaussian noise
    whose energy decays by 60 dB in an RT60 drawn from `rt60_s`, at a direct-to-reverberant ratio drawn from
    `drr_db`. Rooms smear speech's energy later in time, which a sync model that only heard dry speech reads
    as audio lagging the lips. Applied to a training window alone, its first RT60 gets no tail from the speech
    before the window: that part is drier than a room would make it."""
    rt60, drr = float(rng.uniform(*rt60_s)), float(rng.uniform(*drr_db))
    t = np.arange(1, max(int(rt60 * sr), 2)) / sr
    tail = rng.standard_normal(len(t)) * np.exp(-6.908 * t / rt60)  # 10^(-3) in amplitude at t = rt60
    tail *= np.sqrt(10 ** (-drr / 10) / max(float(np.sum(tail**2)), 1e-12))  # energy ratio to the direct path's 1
    impulse = torch.from_numpy(np.concatenate([[1.0], tail]).astype(np.float32))
    wet = AF.fftconvolve(torch.from_numpy(audio.astype(np.float32)), impulse)[: len(audio)].numpy()
    before, after = float(np.sqrt(np.mean(audio**2))), float(np.sqrt(np.mean(wet**2)))
    return (wet * (before / after) if after > 0 else wet).astype(np.float32)


def freeze_mouth(
    lips: np.ndarray, mouths: np.ndarray, rng: np.random.Generator, frac: tuple[float, float] = (0.3, 0.7),
    tries: int = 4,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The window's lips `(T, 20, 2)` and mouth crops `(T, h, w)` with the mouth held still, as it was on the
    span's first frame, over a span of `frac` of the frames while the audio runs on: a mouth that stops moving
    while speech continues (a stalled lip-sync or a frozen face in a fake). Of `tries` random spans, the one
    whose lips moved most is held, so the span falls in speech, not in a pause where a still mouth is right.
    None when the window is too short or its lips never move (nothing to freeze)."""
    t = len(lips)
    n = int(round(rng.uniform(*frac) * t))
    if t < 4 or n < 2:
        return None
    steps = np.abs(np.diff(lips, axis=0)).sum(axis=(1, 2))  # (T-1,) lip motion between frames
    starts = rng.integers(0, t - n + 1, size=tries)
    motion = [float(steps[s : s + n - 1].sum()) for s in starts]
    best = int(np.argmax(motion))
    if motion[best] <= 1e-6:
        return None
    s = int(starts[best])
    lips, mouths = lips.copy(), mouths.copy()
    lips[s : s + n] = lips[s]
    mouths[s : s + n] = mouths[s]
    return lips, mouths


class AVWindows(EpochDataset):
    """Training windows: "av" items (usable lips) train sync/offset/spoof, "audio" items spoof only.

    An in-sync "av" item becomes a shifted negative with probability `shift_prob`: audio moved by
    150-800 ms either way, sync target 0, offset target the lead (> 0 = audio early). Otherwise, with
    probability `freeze_prob`, a frozen-mouth negative (`freeze_mouth`): sync target 0, no offset target.
    An in-sync window that stays a positive has its audio moved by a uniform lead within +-`sync_jitter_ms`
    (sync target 1, offset target that lead): recorded speech reaches a file tens of ms off its picture (capture
    and encoder latency; broadcast tolerates about 45 ms lead and 125 ms lag, ITU-R BT.1359), while the generator's
    authentic clips are exact to the sample, so without it "a few frames off" is learned as fake.
    With probability `reverb_prob` a window's audio (any item, either mode) is heard in a synthetic room
    (`room_reverb`): the generator's speech is dry, and rooms are not.
    """

    def __init__(self, data: ManifestData, items: Sequence[tuple[int, str]], hp: HParams, seed: int) -> None:
        super().__init__(data, [i for i, _ in items], hp, seed)
        self.modes = [m for _, m in items]

    def __getitem__(self, k: int) -> dict[str, Any]:
        rng = self.rng(k)
        i, mode = self.indices[k], self.modes[k]
        entry = self.data.entries[i]
        arrays = self.data.arrays(i)
        spoof = spoof_target(entry)
        item: dict[str, Any] = {"mode": mode, "spoof": np.nan if spoof is None else float(spoof)}
        if mode == "audio":
            n = int(round(self.hp.window_s * arrays.sample_rate))
            start = int(rng.integers(0, max(len(arrays.audio) - n, 0) + 1))
            item["audio"] = self._room(arrays.audio[start : start + n].astype(np.float32), arrays.sample_rate, rng)
            return item
        sync, offset = sync_target(entry), offset_target_ms(entry)
        lead_ms, freeze = 0.0, False
        if sync == 1 and rng.random() < self.hp.shift_prob:
            lo, hi = self.hp.shift_ms
            lead_ms = float(rng.uniform(lo, hi)) * float(rng.choice([-1.0, 1.0]))
            sync, offset = 0, lead_ms
        elif sync == 1 and self.hp.freeze_prob > 0 and rng.random() < self.hp.freeze_prob:
            freeze = True
        if sync == 1 and lead_ms == 0.0 and not freeze and self.hp.sync_jitter_ms > 0:
            lead_ms = float(rng.uniform(-self.hp.sync_jitter_ms, self.hp.sync_jitter_ms))
            offset = lead_ms
        audio, frames, t0 = shift_window(arrays, self.hp.window_s, lead_ms / 1000.0, rng)
        lips, mouths = arrays.lip_trajectory[frames], arrays.mouth_crops[frames]
        if freeze and (held := freeze_mouth(lips, mouths, rng, self.hp.freeze_frac)) is not None:
            (lips, mouths), sync, offset = held, 0, None
        item.update(
            audio=self._room(audio, arrays.sample_rate, rng),
            lips=lips,
            mouths=mouths,
            times=(arrays.timestamps[frames] - t0).astype(np.float32),  # the window's own clock, as served
            sync=np.nan if sync is None else float(sync),
            offset_s=np.nan if offset is None else float(offset) / 1000.0,
        )
        return item


    def _room(self, audio: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        if self.hp.reverb_prob > 0 and rng.random() < self.hp.reverb_prob:
            return room_reverb(audio, sr, rng)
        return audio


def _collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _groups(batch: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Items that stack into one forward pass: same mode, audio length and frame count."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for item in batch:
        key = (item["mode"], len(item["audio"]), len(item.get("times", ())))
        groups.setdefault(key, []).append(item)
    return iter(groups.values())


def _masked_bce(logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    mask = ~torch.isnan(targets)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], targets[mask], pos_weight=weight, reduction="sum")


def av_items(data: ManifestData, split: str, settings: PipelineConfig) -> list[tuple[int, str]]:
    """(entry, "av" | "audio") for every file with audio, as AVAlignmentDeployment would treat it."""
    items = []
    for i in data.indices(split):
        entry, info = data.entries[i], data.peek(i)
        if entry.kind == "image" or not info["has_audio"] or info["n_audio"] == 0:
            continue
        usable = lips_usable_at(info["n_frames"], info["face_coverage"], settings.av)
        if usable and (sync_target(entry) is not None or spoof_target(entry) is not None):
            items.append((i, "av"))
        elif spoof_target(entry) is not None:
            items.append((i, "audio"))
    return items


def train_av_alignment(
    model: AVAlignmentModel, data: ManifestData, hp: HParams, settings: PipelineConfig,
    *, seed: int, device: str, workers: int, progress: bool,
) -> dict[str, Any]:
    """Summed per item: class-balanced BCE on sync (labelled + shifted negatives), smooth-L1 on the
    offset in seconds where known, class-balanced BCE on spoof from the audio encoder."""
    items = av_items(data, "train", settings)
    if not items:
        raise ValueError("no decodable training files with audio in the train split")
    dataset = AVWindows(data, items, hp, seed)
    entries = [data.entries[i] for i, _ in items]
    spoof_weight = pos_weight([t for e in entries if (t := spoof_target(e)) is not None], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    params = list(model.parameters())
    limit_s = model.config.max_offset_ms / 1000.0 * 0.95  # targets stay inside the tanh's range
    for epoch in tqdm(range(hp.epochs), desc="av_alignment", unit="epoch", disable=not progress):
        dataset.epoch = epoch
        model.train()
        for batch in loader(dataset, hp.batch_size, seed, epoch, workers, _collate_items):
            loss = torch.zeros((), device=device)
            for group in _groups(batch):
                audio = audio_to_tensor(np.stack([g["audio"] for g in group]), device)  # (G, N)
                spoof_t = torch.tensor([g["spoof"] for g in group], device=device)
                if group[0]["mode"] == "audio":
                    loss = loss + _masked_bce(model.spoof(audio).spoof_logit, spoof_t, spoof_weight)
                    continue
                out = model(
                    audio,
                    lips_to_tensor(np.stack([g["lips"] for g in group]), device),  # (G, T, 20, 2)
                    mouths_to_tensor(np.stack([g["mouths"] for g in group]), device),  # (G, T, h, w)
                    torch.from_numpy(np.stack([g["times"] for g in group])).to(device),  # (G, T)
                )
                sync_t = torch.tensor([g["sync"] for g in group], device=device)
                offset_t = torch.tensor([g["offset_s"] for g in group], device=device).clamp(-limit_s, limit_s)
                loss = loss + _masked_bce(out.sync_logit, sync_t, torch.ones((), device=device))
                loss = loss + _masked_bce(out.spoof_logit, spoof_t, spoof_weight)
                known = ~torch.isnan(offset_t)
                if bool(known.any()):
                    loss = loss + hp.offset_weight * F.smooth_l1_loss(
                        out.offset_ms[known] / 1000.0, offset_t[known], beta=0.1, reduction="sum"
                    )
            _step(optimizer, loss / len(batch), params, hp.grad_clip)
    model.eval()
    return validate_av(model, data, settings, device)


def validate_av(model: AVAlignmentModel, data: ManifestData, settings: PipelineConfig, device: str) -> dict[str, Any]:
    """Full val clips as served, plus each in-sync clip again with its audio rotated 400 ms early, again with it
    80 ms late (still in sync by broadcast tolerances: `sync_at_audio_80ms_late` is the share of those clips
    called in sync as served, i.e. after `pipeline.av.capture_offset` with the settings' AV window; with
    `capture_lag_ms` 0 it judges the head alone), and again with its mouth held still over 45 % of its frames
    (`freeze_mouth`, seeded per clip)."""
    sync_y, sync_p, shift_y, shift_p, spoof_y, spoof_p, offset_err = [], [], [], [], [], [], []
    freeze_y: list[int] = []
    freeze_p: list[float] = []
    late_p: list[float] = []
    lead_ms, late_ms = 400.0, 80.0
    for i, _ in av_items(data, "val", settings):
        entry, arrays = data.entries[i], data.arrays(i)
        out = run_av(model, arrays, settings.av, device)
        if (t := spoof_target(entry)) is not None:
            spoof_y.append(t)
            spoof_p.append(out.audio.score)
        if out.av.status != "ok":
            continue
        if (t := sync_target(entry)) is not None:
            sync_y.append(t)
            sync_p.append(out.av.details["sync_probability"])
        if (o := offset_target_ms(entry)) is not None:
            offset_err.append(abs(out.av.details["offset_ms"] - o))
        if sync_target(entry) == 1:
            early = np.roll(served_audio(arrays, settings.av), -int(lead_ms / 1000 * arrays.sample_rate))
            shifted = replace(arrays, audio=early)
            s_out = run_av(model, shifted, settings.av, device)
            shift_y += [1, 0]
            shift_p += [out.av.details["sync_probability"], s_out.av.details["sync_probability"]]
            offset_err.append(abs(s_out.av.details["offset_ms"] - lead_ms))
            late = np.roll(served_audio(arrays, settings.av), int(late_ms / 1000 * arrays.sample_rate))
            late_p.append(run_av(model, replace(arrays, audio=late), settings.av, device).av.details["sync_probability"])
            held = freeze_mouth(arrays.lip_trajectory, arrays.mouth_crops, np.random.default_rng([i, 45]), (0.45, 0.45))
            if held is not None:
                f_out = run_av(model, replace(arrays, lip_trajectory=held[0], mouth_crops=held[1]), settings.av, device)
                freeze_y += [1, 0]
                freeze_p += [out.av.details["sync_probability"], f_out.av.details["sync_probability"]]
    return {
        "split": "val",
        "sync": binary_scores(sync_y, sync_p),  # target 1 = in sync
        "sync_vs_audio_400ms_early": binary_scores(shift_y, shift_p),
        "sync_vs_mouth_frozen_45pct": binary_scores(freeze_y, freeze_p) if freeze_y else None,
        "sync_at_audio_80ms_late": float(np.mean(np.asarray(late_p) >= 0.5)) if late_p else None,
        "offset_mae_ms": float(np.mean(offset_err)) if offset_err else None,
        "spoof": binary_scores(spoof_y, spoof_p),
    }


# ---- Fusion ---------------------------------------------------------------------------------


def fit_temperature(logits: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The T > 0 minimising the NLL of sigmoid(logits / T) (Guo et al. 2017), by LBFGS on log T.

    Bounded to [0.05, 20]: perfectly separated validation data would otherwise push T to 0.
    """
    z = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.float64))
    if z.numel() == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.clamp(-3.0, 3.0).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(np.exp(float(log_t.detach())), 0.05, 20.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.as_tensor(np.asarray(logits, np.float64)) / temperature
    return float(F.binary_cross_entropy_with_logits(z, torch.as_tensor(np.asarray(labels, np.float64))))


def jitter(
    features: dict[str, Tensor], spread: dict[str, Tensor], noise: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """`features` with Gaussian noise of `noise` times each feature's spread added (unchanged at 0, drawing
    nothing). With 121 fit files, the fusion learned a step: P(fake) 0.99 at an AV sync probability of 0.67
    and 0.25 at 0.90 with a benign visual score; noise on its inputs asks it for a smoother function."""
    if noise <= 0:
        return features
    return {
        k: v + noise * spread[k].to(v.device) * torch.randn(v.shape, generator=generator).to(v.device)
        for k, v in features.items()
    }


def fusion_target(entry: ManifestEntry, independent: Sequence[str] = ()) -> int:
    """What fusion should say from the modalities it reads: the file's label, except a file manipulated
    only in an `independent` modality (its own branch reports that), which looks authentic to fusion."""
    if not independent or entry.label == 0:
        return entry.label
    labels = entry.modality_labels.model_dump()
    if any(labels.get(m) == 1 for m in independent) and not any(
        v == 1 for m, v in labels.items() if m not in independent
    ):
        return 0
    return entry.label


def evidence_tokens(config: FusionConfig) -> dict[str, tuple[str, ...]]:
    """Manipulated modality (`modality_labels`) -> the fusion tokens that can show it."""
    av_reads_spoof = config.read_embeddings or dict(config.direct).get("av", 0) >= 3  # av_features' spoof logit
    return {"visual": ("visual", "triage"), "audio": ("audio", "av") if av_reads_spoof else ("audio",), "av": ("av",)}


def evidence_matrix(
    entries: Sequence[ManifestEntry], config: FusionConfig, labels: Sequence[int] | None = None
) -> Tensor:
    """(N, M) bool: token m can show file n's manipulation. All True for authentic files and for fakes
    without per-modality labels (nothing is known about where their evidence lies). `labels` (default:
    each entry's) are the targets fusion learns, `fusion_target`'s."""
    names = [name for name, _ in config.modalities]
    tokens = evidence_tokens(config)
    shows = torch.ones(len(entries), len(names), dtype=torch.bool)
    for row, entry in enumerate(entries):
        label = entry.label if labels is None else labels[row]
        manipulated = [m for m, v in entry.modality_labels.model_dump().items() if v == 1]
        if label == 1 and manipulated:
            shows[row] = torch.tensor([any(n in tokens[m] for m in manipulated) for n in names])
    return shows


def drop_modalities(present: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Hide each present modality with probability p, never all of them: the served graph skips
    branches (no audio, images, failures), and fusion must not lean on any single one."""
    keep = torch.rand(present.shape, generator=generator).to(present.device) >= p
    dropped = present & keep
    empty = ~dropped.any(dim=1)
    dropped[empty] = present[empty]
    return dropped


def train_fusion(
    model: FusionModel, branches: LocalPipeline, data: ManifestData, hp: HParams, settings: PipelineConfig,
    *, seed: int, device: str, progress: bool,
) -> dict[str, Any]:
    """Class-unweighted BCE on `label` over the trained branches' features for the `fusion` split,
    with modality dropout; then the temperature minimising val NLL.

    A fake none of whose manipulated modalities has a token left (hidden by dropout, or its branch did
    not run) adds nothing to that step's loss: what is left looks authentic, and a "fake" label there
    would teach fusion that missing evidence is evidence (the served audio branch abstains on every real
    voice, so such a fusion would call every real video suspicious).
    """
    fit_idx = data.indices("fusion")
    val_idx = data.indices("val")
    every_branch = {"honour_early_exit": False, "progress": progress}
    fit_runs = run_many(branches, data, fit_idx, desc="fusion split", **every_branch)
    val_runs = run_many(branches, data, val_idx, desc="val split", **every_branch)
    independent = model.config.independent
    unread = set(independent) | set(model.config.ignored)

    def usable(runs: Sequence[Any], idx: Sequence[int]) -> list[tuple[dict[str, np.ndarray], int, int]]:
        out = []
        for r, i in zip(runs, idx, strict=True):
            features = {m: f for m, f in (r.features or {}).items() if m not in unread}
            if features:
                out.append((features, fusion_target(data.entries[i], independent), i))
        return out

    fit, val = usable(fit_runs, fit_idx), usable(val_runs, val_idx)
    if not fit:
        raise ValueError("no file of the fusion split produced any branch output")
    features, present = fusion_batch([f for f, _, _ in fit], model, device)
    labels = torch.tensor([y for _, y, _ in fit], dtype=torch.float32, device=device)
    shows = evidence_matrix([data.entries[i] for _, _, i in fit], model.config, [y for _, y, _ in fit]).to(device)
    spread = {k: v.std(dim=0) for k, v in features.items()}  # (dim,) per modality, over the fit split
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    rank, world = data_parallel()
    for _ in tqdm(range(hp.epochs), desc="fusion", unit="epoch", disable=not progress):
        model.train()
        order = torch.randperm(len(fit), generator=generator).to(device)
        for batch in order.split(hp.batch_size):
            mask = drop_modalities(present[batch], hp.modality_dropout, generator)
            out = model(jitter({k: v[batch] for k, v in features.items()}, spread, hp.input_noise, generator), mask)
            weight = (mask & shows[batch]).any(dim=1).float()  # 0: a fake with no evidence left
            terms = F.binary_cross_entropy_with_logits(out.logit, labels[batch], reduction="none") * weight
            if world == 1:
                loss = terms.sum() / len(batch)
            else:  # every rank runs the (tiny) forward alike; its slice's share of the batch mean goes into the average
                mine = torch.arange(len(batch), device=device).tensor_split(world)[rank]
                loss = terms[mine].sum() * world / len(batch)
            _step(optimizer, loss, params, hp.grad_clip)
    model.eval()
    model.set_temperature(1.0)
    metrics: dict[str, Any] = {"fit_split": "fusion", "fit_files": len(fit), "calibration_split": "val"}
    if val:
        with torch.inference_mode():
            raw = model(*fusion_batch([f for f, _, _ in val], model, device)).logit.float().cpu().numpy()
        y = np.array([label for _, label, _ in val])
        temperature = fit_temperature(raw, y)
        model.set_temperature(temperature)
        metrics.update(
            temperature=temperature, val_nll_before=nll(raw, y), val_nll_after=nll(raw, y, temperature),
            val=binary_scores(y, 1.0 / (1.0 + np.exp(-raw / temperature))),
        )
    else:
        metrics.update(temperature=1.0, note="no val files: temperature left at 1")
    return metrics


# ---- cards and the public API -----------------------------------------------------------------

_FUSION_INPUTS = (
    "Inputs: the trained branches' fusion features on the `fusion` split, which no branch trained on, computed by "
    "the served stages (keyframes from triage scores, etc.) with every branch run."
)
_FUSION_LOSS = (
    "Loss: BCE on label, modality dropout; a fake none of whose manipulated modalities has a token left adds no "
    "loss (it looks authentic to what is left). Temperature: LBFGS on val NLL."
)
METHOD = {
    "fast_triage": "CNN-LSTM on every sampled face crop (as FastTriage serves it); trained on random "
    "runs of consecutive crops from `train` videos. Loss: class-balanced BCE on the clip logit + "
    "0.5 x BCE on the max frame logit (multiple-instance). Target: the clip label (any manipulation), so "
    "audio/AV-only fakes keep triage unsure and out of the early exit.",
    "compression_resilient": "Phase 1: the denoising autoencoder learns degraded -> clean on REAL "
    "faces (JPEG q15-90, down/up-scaling, Gaussian noise; or re-compressed copy -> original crop "
    "where `meta.original` links them). Phase 2: DAE frozen; RGB + SRM streams and head learn "
    "class-balanced BCE per face crop with flips and random re-compression. Target: "
    "modality_labels.visual, else label.",
    "av_alignment": "Random windows of lips, mouth crops and audio on the window's clock (as served). "
    "Sync and offset are read from the model's lag search (learned audio/visual channels plus audio "
    "energy vs mouth aperture, correlated at every lead in +-1 s) plus the joint transformer's CLS. "
    "Sync: BCE, target modality_labels.av (authentic = in sync) plus self-supervised negatives "
    "(audio moved 150-800 ms either way, half of the in-sync windows). Offset: smooth-L1 in seconds "
    "on meta.av_offset_ms and the on-the-fly shifts (> 0 = audio leads). Spoof: class-balanced BCE on "
    "modality_labels.audio from the audio encoder alone (audio-only files included).",
    "fusion": _FUSION_INPUTS + " The model's linear path over each branch's scores is trained jointly with the "
    "attention path. " + _FUSION_LOSS,
    "fusion_linear": _FUSION_INPUTS + " A logistic regression over each branch's leading scalars (the AV sync logit "
    "without the offset), one bias per modality present, no attention path. " + _FUSION_LOSS,
}


def equivalent_command(
    name: str, manifest: Path, version: str, *, preset: str, epochs: int, batch_size: int, lr: float,
    seed: int, device: str, weights_dir: Path | None, branch_version: str | None, exclude_families: Sequence[str],
    fusion_scalars_only: bool = False, fusion_ignore: Sequence[str] = (), fusion_visual_peak: str = "second",
    av_freeze: float = 0.0, fusion_input_noise: float = 0.0, av_sync_jitter: float = 0.0, av_reverb: float = 0.0,
    fusion_linear: bool = False,
) -> str:
    """The CLI line that reproduces a call, for cards written by Python callers."""
    args = ["spectrashield", "train", name, "--manifest", str(manifest), "--version", version,
            "--preset", preset, "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", f"{lr:g}",
            "--seed", str(seed), "--device", device]
    if weights_dir is not None:
        args += ["--weights-dir", str(weights_dir)]
    if branch_version is not None and name == "fusion":
        args += ["--branch-version", branch_version]
    for family in exclude_families:
        args += ["--exclude-family", family]
    if name == "fusion":
        args += ["--fusion-scalars-only"] if fusion_scalars_only else []
        for modality in fusion_ignore:
            args += ["--fusion-ignore", modality]
        args += ["--fusion-visual-peak", fusion_visual_peak]
        args += ["--fusion-input-noise", f"{fusion_input_noise:g}"] if fusion_input_noise > 0 else []
        args += ["--fusion-linear"] if fusion_linear else []
    if name == "av_alignment" and av_freeze > 0:
        args += ["--av-freeze", f"{av_freeze:g}"]
    if name == "av_alignment" and av_sync_jitter > 0:
        args += ["--av-sync-jitter", f"{av_sync_jitter:g}"]
    if name == "av_alignment" and av_reverb > 0:
        args += ["--av-reverb", f"{av_reverb:g}"]
    return shlex.join(args)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


SOURCE_NAMES = {
    "synthetic": "generated by `spectrashield generate` (training/benchmark.py: scikit-image's bundled "
    "photographs animated, synthesized speech; nothing downloaded)",
}


def training_data_line(data: ManifestData) -> str:
    """The manifest's entries by `source`, e.g. "800 files generated by `spectrashield generate` (...)"."""
    by_source: dict[str, int] = {}
    for entry in data.entries:
        by_source[entry.source] = by_source.get(entry.source, 0) + 1
    return "; ".join(f"{n} files {SOURCE_NAMES.get(src, f'from source `{src}`')}" for src, n in sorted(by_source.items()))


def card_text(
    name: str, version: str, *, command: str, data: ManifestData, preset: str, hp: HParams,
    device: str, seed: int, wall_s: float, metrics: dict[str, Any], used: dict[str, int],
    exclude_families: Sequence[str], extra_lines: Sequence[str] = (), method: str | None = None,
) -> str:
    """Model card: what data, which command, how long, how well on validation (`method`: instead of METHOD's)."""
    counts = data.counts()
    families = sorted({f for split in counts.values() for f in split})
    rows = [
        f"| {split} | " + " | ".join(str(counts[split].get(f, 0)) for f in families) + " |"
        for split in ("train", "val", "fusion", "test") if split in counts
    ]
    lines = [
        f"# {name} {version}: trained",
        "",
        f"Trained by `training/train.py` (preset `{preset}`) on the manifest `{data.manifest}`.",
        "",
        f"- Command: `{command}`",
        f"- Training data: {training_data_line(data)}",
        f"- Files used: " + ", ".join(f"{k} {v}" for k, v in used.items()),
        f"- Files the decoder refused (skipped): {len(data.failed)}",
        f"- Families excluded from training splits: {', '.join(exclude_families) or 'none'}"
        + (f" ({data.excluded} files)" if exclude_families else ""),
        f"- Hyperparameters: epochs {hp.epochs}, batch size {hp.batch_size}, lr {hp.lr:g}, seed {seed}, "
        f"device {device}",
        f"- Wall time: {wall_s:.1f} s",
        *[f"- {line}" for line in extra_lines],
        "",
        "## Validation scores",
        "",
        *[f"- {k}: {_fmt(v)}" for k, v in metrics.items()],
        "",
        "## Method",
        "",
        method or METHOD[name],
        "",
        "## Data: decodable files per split and family (the splits this run read)",
        "",
        "| split | " + " | ".join(families) + " |",
        "| --- | " + " | ".join("---" for _ in families) + " |",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def check_new_version(root: Path, names: Sequence[str], version: str, overwrite: bool) -> None:
    """Refuse to replace existing bundles (before any training time is spent) unless asked to."""
    existing = [str(Path(root) / n / version) for n in names if (Path(root) / n / version).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"bundles exist: {', '.join(existing)}; choose a new version or pass overwrite/--force")


def _build(name: str, preset: str) -> nn.Module:
    return MODELS.get(name if preset == "default" else f"{name}_{preset}")()


def train_model(
    name: ModelName,
    manifest: Path,
    *,
    version: str,
    weights_dir: Path | None = None,
    preset: Preset = "default",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    branch_version: str | None = None,
    exclude_families: Sequence[str] = (),
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    workers: int = 1,
    loader_workers: int = 0,
    data: ManifestData | None = None,
    command: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    fusion_scalars_only: bool = False,
    fusion_ignore: Sequence[str] = (),
    fusion_visual_peak: str = "second",
    save_root: Path | None = None,
    av_freeze: float = 0.0,
    fusion_input_noise: float = 0.0,
    av_sync_jitter: float = 0.0,
    av_reverb: float = 0.0,
    fusion_linear: bool = False,
) -> TrainResult:
    """Train one model and save it to `<weights_dir>/<name>/<version>/` as a `trained: true` bundle.

    `save_root` writes the bundle under another root instead (a Ray Train worker's scratch folder).

    `epochs`, `batch_size`, `lr` override the preset's `HParams`. Fusion reads the branch bundles
    of `branch_version` (default: `version`) from the same `weights_dir`. `workers` decodes
    uncached files in parallel; `loader_workers` loads cached arrays in DataLoader workers. An
    existing bundle of that version is an error unless `overwrite`: a served version must not
    change under the replicas that verified its checksum.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    root = weights_dir if weights_dir is not None else weights_root()
    check_new_version(save_root or root, [name], version, overwrite)
    started = time.perf_counter()
    settings = settings or PipelineConfig()
    base = HPARAMS[(name, preset)]
    if name == "fusion" and fusion_linear and preset == "default":
        # A logistic regression from zero needs more and larger steps than the attention path: at 60 epochs of
        # 3e-3 it stopped at val AUC 0.79 (NLL 0.50); at 300 of 3e-2, val AUC 0.94 (NLL 0.29), as sklearn's fit.
        base = replace(base, epochs=300, lr=3e-2)
    hp = replace(
        base,
        epochs=base.epochs if epochs is None else epochs,
        batch_size=base.batch_size if batch_size is None else batch_size,
        lr=base.lr if lr is None else lr,
        freeze_prob=av_freeze if name == "av_alignment" else base.freeze_prob,
        sync_jitter_ms=av_sync_jitter if name == "av_alignment" else base.sync_jitter_ms,
        reverb_prob=av_reverb if name == "av_alignment" else base.reverb_prob,
        input_noise=fusion_input_noise if name == "fusion" else base.input_noise,
    )
    command = command or equivalent_command(
        name, manifest, version, preset=preset, epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, seed=seed,
        device=device, weights_dir=weights_dir, branch_version=branch_version, exclude_families=exclude_families,
        fusion_scalars_only=fusion_scalars_only, fusion_ignore=fusion_ignore, fusion_visual_peak=fusion_visual_peak,
        av_freeze=hp.freeze_prob, fusion_input_noise=hp.input_noise, av_sync_jitter=hp.sync_jitter_ms,
        av_reverb=hp.reverb_prob, fusion_linear=fusion_linear,
    )
    if data is None:
        splits = ("fusion", "val") if name == "fusion" else ("train", "val")
        data = load_manifest_data(
            manifest, splits=splits, cache_dir=cache_dir, decode_config=settings.decode,
            exclude_families=exclude_families, workers=workers, progress=progress,
        )
    seed_everything(seed, device)
    extra_lines: list[str] = []
    common = {"seed": seed, "device": device, "progress": progress}
    if name == "fusion":
        branches = load_pipeline(
            parse_versions(branch_version) or version, settings, weights_dir=root, device=device, with_fusion=False,
        )
        template = _build("fusion", preset).config
        av_config = branches.bundles["av_alignment"].config
        dims = modality_dims(branches.bundles["compression_resilient"].config, av_config)
        # A spoof head trained on real speech (its own, or a speech expert answering where the first head
        # abstains) is not re-learned from the benchmark's synthetic speech: its calibrated score is combined
        # with the fused probability (noisy-OR).
        independent = ("audio",) if av_config.spoof_net is not None or av_config.speech_expert is not None else ()
        unread = set(independent) | set(fusion_ignore)
        direct = tuple(d for d in template.direct if d[0] not in unread)
        if fusion_linear and not fusion_scalars_only:
            raise ValueError("--fusion-linear reads scalars only: give --fusion-scalars-only too")
        if fusion_scalars_only:  # the av token's spoof logit is the audio token's: read it once, there
            # A linear term in the signed offset says nothing (fakes lead and lag): the linear fusion reads the
            # sync logit alone.
            direct = tuple((m, 1 if fusion_linear else 2) if m == "av" else (m, k) for m, k in direct)
        config = replace(
            template, modalities=tuple(d for d in dims if d[0] not in unread), independent=independent,
            direct=direct, read_embeddings=not fusion_scalars_only, ignored=tuple(fusion_ignore),
            visual_peak=fusion_visual_peak, linear_only=fusion_linear,
        )
        model = build_fusion(config).to(device)
        metrics = train_fusion(model, branches, data, hp, settings, **common)
        used = {"fusion": len(data.indices("fusion")), "val": len(data.indices("val"))}
        extra_lines.append("Branch bundles: " + ", ".join(branches.versions.values()))
        if fusion_scalars_only:
            extra_lines.append("Reads each branch's logits and their statistics only, never its embedding "
                               "(`--fusion-scalars-only`); the av token without the spoof logit")
        if fusion_ignore:
            extra_lines.append("Not read at all (`--fusion-ignore`): " + ", ".join(fusion_ignore))
        peak = {"second": "the second-largest crop logit (one frame alone is not evidence)", "max": "the largest crop logit"}
        extra_lines.append(f"Reads beside the mean visual logit (`--fusion-visual-peak {fusion_visual_peak}`): "
                           + peak[fusion_visual_peak])
        if fusion_linear:
            extra_lines.append("A logistic regression over those scalars (`--fusion-linear`): the av sync logit without "
                               "the offset, one bias per modality present, no attention path")
        if hp.input_noise > 0:
            extra_lines.append(f"Trained with noise on its inputs (`--fusion-input-noise {hp.input_noise:g}`): Gaussian, "
                               "that many standard deviations of each feature over the fit split")
    else:
        model = _build(name, preset).to(device)
        if name == "fast_triage":
            metrics = train_fast_triage(model, data, hp, workers=loader_workers, **common)
        elif name == "compression_resilient":
            metrics = train_compression_resilient(model, data, hp, settings, workers=loader_workers, **common)
        else:
            metrics = train_av_alignment(model, data, hp, settings, workers=loader_workers, **common)
        used = {"train": len(data.indices("train")), "val": len(data.indices("val"))}
    wall_s = time.perf_counter() - started
    config = model.portable_config() if isinstance(model, AVAlignmentModel) else model.config
    card = card_text(
        name, version, command=command, data=data, preset=preset, hp=hp, device=device, seed=seed,
        wall_s=wall_s, metrics=metrics, used=used, exclude_families=exclude_families, extra_lines=extra_lines,
        method=METHOD["fusion_linear"] if name == "fusion" and fusion_linear else None,
    )
    training_info = {
        "manifest": str(manifest), "command": command, "preset": preset, "hparams": asdict(hp), "seed": seed,
        "device": device, "wall_s": round(wall_s, 2), "files": used, "exclude_families": list(exclude_families),
        "validation": metrics,
    }
    path = save_bundle(
        model.cpu(), Path(save_root or root) / name / version, arch=name, config=config, trained=True, card_text=card,
        extra={"training": training_info},
    )
    logger.info("saved %s (%.1f s)", path, wall_s)
    return TrainResult(name=name, path=path, metrics=metrics, wall_s=wall_s, command=command)


def train_all(
    manifest: Path,
    version: str,
    *,
    weights_dir: Path | None = None,
    preset: Preset = "default",
    seed: int = 0,
    device: str = "cpu",
    exclude_families: Sequence[str] = (),
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    workers: int = 1,
    loader_workers: int = 0,
    epochs: int | None = None,
    command: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **model_options: Any,
) -> dict[str, TrainResult]:
    """Every model in dependency order (branches, then fusion on them), decoding the manifest once.

    `model_options` are `train_model`'s per-model options (`av_freeze`, `fusion_linear`, ...): each applies to
    its own model only."""
    check_new_version(weights_dir if weights_dir is not None else weights_root(), MODEL_NAMES, version, overwrite)
    settings = settings or PipelineConfig()
    data = load_manifest_data(
        manifest, splits=("train", "val", "fusion"), cache_dir=cache_dir, decode_config=settings.decode,
        exclude_families=exclude_families, workers=workers, progress=progress,
    )
    results = {}
    for name in MODEL_NAMES:
        results[name] = train_model(
            name, manifest, version=version, weights_dir=weights_dir, preset=preset, epochs=epochs, seed=seed,
            device=device, branch_version=version, exclude_families=exclude_families, settings=settings,
            loader_workers=loader_workers, data=data, overwrite=overwrite, progress=progress,
            command=f"{command} (step {name})" if command else None, **model_options,
        )
    return results
