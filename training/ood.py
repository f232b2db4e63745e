"""Fit a branch's out-of-distribution statistics on its training data and attach them to its bundle.

Visual (`compression_resilient`): the clip embedding is what the served visual stage measures,
the mean of the CompressionResilient embeddings over the face crops it scores
(`pipeline.visual.run_visual`). One Gaussian (mean and a Ledoit-Wolf shrunk covariance) from the
authentic `train` files; unlike authentic media, the verdict abstains.

Audio (`av_alignment`): the spoof head's embedding of what the served AV stage hears
(`pipeline.av.run_av`). One Gaussian per class, authentic and spoofed, from every `train` file
with speech: a fake is *supposed* to lie away from the authentic voices, so an authentic-only
region would flag the fakes the head was trained to catch; a voice far from both classes is one
it never learned either way, and there the branch abstains.

Channel (`av_alignment` too, `channel_ood.safetensors`): the same files' `models.channel.channel_profile`
(spectrum and noise floor of what the stage heard, no model involved), one Gaussian per class. The
spoof head's embedding can place a recording chain it never heard deep inside one class; the input's
own profile cannot be fooled that way.

The threshold is a quantile of the `val` files' distances (authentic only for visual, both classes
for audio and channel), so in-distribution media is flagged about 1 - quantile of the time. Nothing here looks
at a cross-generator set.

Face detail (`face_detail_minimums`, no model): the visual stage's `min_face_detail` and `min_surround_detail`
(`pipeline.config.VisualConfig`), measured on the authentic training faces made into thumbnails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from tqdm.auto import tqdm

from media.detail import face_and_surround_detail
from models.bundle import CHANNEL_OOD_FILE, EXPERT_CHANNEL_OOD_FILE, EXPERT_OOD_FILE, OOD_FILE, attach_ood, load_version
from models.channel import channel_profile
from models.fusion import VISUAL_SCALARS
from models.ood import OODStats
from pipeline.av import run_av, served_audio
from pipeline.config import PipelineConfig
from pipeline.local import LocalPipeline
from pipeline.tensors import audio_to_tensor
from pipeline.visual import run_visual
from training.features import ManifestData, load_manifest_data

logger = logging.getLogger(__name__)

BRANCH_BUNDLES = {
    "visual": "compression_resilient", "audio": "av_alignment", "channel": "av_alignment",
    "expert": "av_alignment", "expert_channel": "av_alignment",
}
STATS_FILE = {"visual": OOD_FILE, "audio": OOD_FILE, "channel": CHANNEL_OOD_FILE, "expert": EXPERT_OOD_FILE,
              "expert_channel": EXPERT_CHANNEL_OOD_FILE}


def clip_embeddings(pipeline: Any, data: ManifestData, indices: list[int], progress: bool = True) -> np.ndarray:
    """(N, E) mean crop embedding of each file whose visual branch ran (files without a face are left out)."""
    bundle = pipeline.bundles["compression_resilient"]
    rows = []
    for i in tqdm(indices, desc="embeddings", unit="file", disable=not progress):
        branch = run_visual(bundle.model, [data.arrays(i)], [None], pipeline.config.visual, pipeline.device)[0]
        if branch.status == "ok":
            rows.append(branch.features[VISUAL_SCALARS:])  # visual_features: its scalars, then the mean embedding
    return np.asarray(rows, np.float64)


def speech_embeddings(
    pipeline: Any, data: ManifestData, indices: list[int], progress: bool = True, channel: bool = False,
    expert: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, E) spoof-head embeddings (`expert`: the speech expert's; `channel`: channel profiles instead) and
    (N,) labels of the files whose audio branch ran (speech heard)."""
    model = pipeline.bundles["av_alignment"].model
    config = pipeline.config.av
    rows, labels = [], []
    for i in tqdm(indices, desc="voices", unit="file", disable=not progress):
        arrays = data.arrays(i)
        audio = run_av(model, arrays, config, pipeline.device).audio  # no statistics: every voiced file is "ok"
        if audio.status == "ok":
            heard = served_audio(arrays, config)
            if channel:  # the profile reads what the stage heard
                rows.append(channel_profile(heard))
            elif expert:
                with torch.inference_mode():
                    out = model.expert_spoof(audio_to_tensor(heard, pipeline.device).unsqueeze(0))
                if out is None:
                    raise ValueError("this av_alignment bundle has no speech expert")
                rows.append(out.embedding[0].float().cpu().numpy())
            else:  # audio_features: [spoof logit, embedding]
                rows.append(audio.features[1:])
            labels.append(data.entries[i].label)
    return np.asarray(rows, np.float64), np.asarray(labels, np.int64)


def fit_stats(
    train: np.ndarray, val: np.ndarray, quantile: float = 0.99, train_labels: np.ndarray | None = None,
) -> tuple[OODStats, dict[str, Any]]:
    """Shrunk Gaussians from `train` (one per label with `train_labels`), threshold = `quantile` of `val`'s distances."""
    labels = np.zeros(len(train), np.int64) if train_labels is None else np.asarray(train_labels)
    classes = sorted(set(labels.tolist()))
    if len(val) < 1 or any((labels == c).sum() < 2 for c in classes) or not classes:
        counts = {int(c): int((labels == c).sum()) for c in classes}
        raise ValueError(f"need >= 2 training embeddings per class and >= 1 validation one, got {counts} and {len(val)}")
    fits = [LedoitWolf().fit(train[labels == c]) for c in classes]
    means = np.stack([lw.location_ for lw in fits])
    precisions = np.stack([lw.precision_ for lw in fits])
    provisional = OODStats(means, precisions, float("inf"))
    distances = np.array([provisional.distance(x) for x in val])
    stats = OODStats(means, precisions, float(np.quantile(distances, quantile)))
    report = {
        "train_files": int(len(train)), "val_files": int(len(val)), "quantile": quantile, "classes": classes,
        "threshold": stats.threshold, "shrinkage": [float(lw.shrinkage_) for lw in fits],
        "val_distance_median": float(np.median(distances)),
        "train_distance_median": float(np.median([stats.distance(x) for x in train])),
    }
    return stats, report


def fit_ood(
    manifest: Path,
    version: str,
    *,
    branch: str = "visual",
    weights_dir: Path | None = None,
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    quantile: float = 0.99,
    hold_out_sources: tuple[str, ...] = (),
    device: str = "cpu",
    workers: int = 1,
    progress: bool = True,
    attach: bool = True,
) -> dict[str, Any]:
    """Fit `branch`'s statistics on the manifest's train/val files and (with `attach`) add them to its bundle.

    Files of `hold_out_sources` are left out (as `train-spoof --hold-out-source` leaves them out of training).
    """
    if branch not in BRANCH_BUNDLES:
        raise ValueError(f"branch must be one of {', '.join(BRANCH_BUNDLES)}, got {branch!r}")
    settings = settings or PipelineConfig()
    data = load_manifest_data(
        manifest, splits=("train", "val"), cache_dir=cache_dir, decode_config=settings.decode,
        exclude_sources=hold_out_sources, workers=workers, progress=progress,
    )
    name = BRANCH_BUNDLES[branch]
    bundle = load_version(name, version, root=weights_dir, device=device)  # only this branch's bundle
    pipeline = LocalPipeline(settings, {name: bundle}, device)

    if branch == "visual":
        def authentic(split: str) -> list[int]:
            return [i for i in data.indices(split) if data.entries[i].label == 0 and data.entries[i].kind != "audio"]

        train = clip_embeddings(pipeline, data, authentic("train"), progress)
        val = clip_embeddings(pipeline, data, authentic("val"), progress)
        stats, report = fit_stats(train, val, quantile)
    else:
        def voiced(split: str) -> list[int]:
            return [i for i in data.indices(split) if data.entries[i].kind != "image"]

        channel, expert = branch in ("channel", "expert_channel"), branch.startswith("expert")
        train, labels = speech_embeddings(pipeline, data, voiced("train"), progress, channel, expert)
        val, _ = speech_embeddings(pipeline, data, voiced("val"), progress, channel, expert)
        stats, report = fit_stats(train, val, quantile, train_labels=labels)
    if attach:
        attach_ood(bundle.path, stats, STATS_FILE[branch])
        logger.info("attached %s OOD statistics to %s (threshold %.3f)", branch, bundle.path, stats.threshold)
    return {"branch": branch, "bundle": str(bundle.path), "manifest": str(manifest),
            "held_out_sources": list(hold_out_sources), **report}


def face_detail_minimums(
    manifest: Path, *, split: str = "train", side: int = 32, quantile: float = 0.9, cache_dir: Path | None = None,
    settings: PipelineConfig | None = None, workers: int = 1, progress: bool = True,
) -> dict[str, Any]:
    """The face-detail minimums of the visual stage, from the authentic faces of `split`: one face crop per file
    (the middle frame with a face), reduced to a `side` px thumbnail and enlarged back, measured as the stage
    measures (`media.detail.face_and_surround_detail`: the crop and its top quarter). The minimums are the
    `quantile` of those: a face that shows no more detail than such a thumbnail falls under them that often. The
    crops as they are, beside them."""
    settings = settings or PipelineConfig()
    data = load_manifest_data(manifest, splits=(split,), cache_dir=cache_dir, decode_config=settings.decode,
                              workers=workers, progress=progress)
    crops = []
    for i in data.indices(split):
        if data.entries[i].label != 0 or data.entries[i].kind == "audio":
            continue
        arrays = data.arrays(i)
        found = np.flatnonzero(arrays.face_found)
        if found.size:
            crops.append(arrays.face_crops[found[found.size // 2]])
    if not crops:
        raise ValueError(f"no authentic face in the {split} split of {manifest}")
    faces = np.stack(crops)
    size = faces.shape[2], faces.shape[1]
    small = np.stack([
        cv2.resize(cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA), size, interpolation=cv2.INTER_CUBIC)
        for c in faces
    ])

    (face, surround), (face_small, surround_small) = face_and_surround_detail(faces), face_and_surround_detail(small)
    return {
        "split": split, "faces": int(len(faces)), "side": side, "quantile": quantile,
        "min_face_detail": round(float(np.quantile(face_small, quantile)), 5),
        "min_surround_detail": round(float(np.quantile(surround_small, quantile)), 5),
        "as_they_are": {
            "face_detail_median": round(float(np.median(face)), 5),
            "surround_detail_median": round(float(np.median(surround)), 5),
            "face_detail_quantile_" + f"{1 - quantile:g}": round(float(np.quantile(face, 1 - quantile)), 5),
        },
    }
