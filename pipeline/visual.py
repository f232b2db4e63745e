"""The visual stage: CompressionResilient (two-stream CNN + DAE) on the keyframes' face crops."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from media.detail import face_and_surround_detail
from models import CompressionResilientDetector, visual_features
from models.ood import OODStats
from pipeline.config import VisualConfig
from pipeline.results import BranchResult, KeyframeResult, ModelInfo, StageInput, sigmoid
from pipeline.tensors import images_to_tensor
from pipeline.timing import Timer


def crop_indices(clip: StageInput, keyframes: KeyframeResult | None, config: VisualConfig) -> np.ndarray:
    """The frames whose face crops are scored (sorted, unique; empty when no frame has a face).

    The keyframes that show a face; when none does, up to `max_crops` evenly spaced frames among
    those with a face.
    """
    found = np.flatnonzero(np.asarray(clip.face_found, bool))
    if keyframes is not None and keyframes.keyframes:
        idx = np.intersect1d(np.asarray(keyframes.indices, dtype=np.int64), found)
        if idx.size:
            return idx
    if found.size == 0:
        return found.astype(np.int64)
    picks = np.linspace(0, found.size - 1, min(found.size, config.max_crops)).round().astype(np.int64)
    return np.unique(found[picks])


def run_visual(
    model: CompressionResilientDetector, clips: Sequence[StageInput], keyframes: Sequence[KeyframeResult | None],
    config: VisualConfig, device: str = "cpu", info: ModelInfo | None = None, ood: OODStats | None = None,
) -> list[BranchResult]:
    """One forward pass over the chosen crops of every clip with frames, split back per clip.

    With `ood` (the bundle's authentic-data statistics) each clip's mean crop embedding is measured
    against them: `details.ood_distance`, and `out_of_distribution` above the fitted threshold.
    A face whose crops show too little detail, and the head around it too (`config.min_face_detail`,
    `min_surround_detail`), is scored but not judged: status `skipped`, code `low_quality`, the score reported,
    fusion does not read it.
    """
    results: list[BranchResult | None] = [None] * len(clips)
    chosen: list[tuple[int, np.ndarray]] = []  # (clip position, its frame indices)
    for i, (clip, kf) in enumerate(zip(clips, keyframes, strict=True)):
        idx = crop_indices(clip, kf, config) if clip.n_frames else np.zeros(0, np.int64)
        if clip.n_frames == 0:
            results[i] = BranchResult("visual", "skipped", info, reason="no video frames", code="no_video")
        elif idx.size == 0:
            results[i] = BranchResult("visual", "skipped", info, reason="no face found in any frame", code="no_face")
        else:
            chosen.append((i, idx))
    if not chosen:
        return results
    with Timer() as timer, torch.inference_mode():
        crops = np.concatenate([clips[i].face_crops[idx] for i, idx in chosen])  # (sum K, S, S, 3)
        out = model(images_to_tensor(crops, device))
        logits = out.logit.float().cpu().numpy()  # (sum K,)
        embeddings = out.embedding.float().cpu().numpy()  # (sum K, E)
        errors = out.recon_error.float().cpu().numpy()  # (sum K,)
    start = 0
    for i, idx in chosen:
        clip, rows = clips[i], slice(start, start + len(idx))
        start += len(idx)
        distance = ood.distance(embeddings[rows].mean(axis=0)) if ood is not None else None
        detail, around = (float(np.median(d)) for d in face_and_surround_detail(crops[rows]))
        blurred = detail < config.min_face_detail and around < config.min_surround_detail
        results[i] = BranchResult(
            "visual", "skipped" if blurred else "ok", info,
            score=sigmoid(float(logits[rows].mean())),
            reason=(
                f"the face and the head around it show too little detail to judge (detail {detail:.4f} and "
                f"{around:.4f}, minimums {config.min_face_detail:g} and {config.min_surround_detail:g}: about what a "
                "32 px thumbnail holds), blurred or enlarged from a small picture: its score is a guess and is not used"
            ) if blurred else None,
            code="low_quality" if blurred else None,
            features=visual_features(logits[rows], embeddings[rows], errors[rows]),
            details={
                "frames_analyzed": int(len(idx)),
                "frames_with_face": int(len(idx)),  # every analysed crop shows a face
                "frame_times": [round(float(clip.timestamps[j]), 3) for j in idx],
                "max_frame_score": sigmoid(float(logits[rows].max())),
                "reconstruction_error": float(errors[rows].mean()),
                "batch_size": len(chosen),
                "face_detail": round(detail, 5),
                "surround_detail": round(around, 5),
                **({"ood_distance": distance, "ood_threshold": ood.threshold} if ood is not None else {}),
            },
            timing_ms=timer.ms,
            out_of_distribution=None if ood is None else distance > ood.threshold,
            item_scores=np.array([sigmoid(float(x)) for x in logits[rows]], np.float32),
        )
    return results
