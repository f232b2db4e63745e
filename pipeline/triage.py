"""The triage stage: FastTriage over every sampled face crop -> clip score, per-frame scores, early exit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models import FastTriage, triage_features
from pipeline.config import TriageConfig
from pipeline.results import BranchResult, ModelInfo, StageInput, TriageResult, sigmoid
from pipeline.tensors import images_to_tensor
from pipeline.timing import Timer


def early_exit(p: float, config: TriageConfig) -> str | None:
    """"real" / "fake" when triage alone settles the clip, else None."""
    return "real" if p < config.early_exit_low else "fake" if p > config.early_exit_high else None


def skipped(clip: StageInput, config: TriageConfig, info: ModelInfo | None) -> TriageResult | None:
    """Triage's abstention for a clip it has nothing to score on, else None."""
    if not clip.n_frames:
        return TriageResult(BranchResult("triage", "skipped", info, reason="no video frames", code="no_video"))
    if clip.face_coverage < config.min_face_coverage:
        reason = f"face in {clip.face_coverage:.0%} of frames (triage needs {config.min_face_coverage:.0%})"
        return TriageResult(BranchResult("triage", "skipped", info, reason=reason, code="no_face"))
    return None


def run_triage(
    model: FastTriage, clips: Sequence[StageInput], config: TriageConfig,
    device: str = "cpu", info: ModelInfo | None = None,
) -> list[TriageResult]:
    """One forward pass over every clip with frames (packed: no clip reads another's frames or padding)."""
    results: list[TriageResult | None] = [skipped(clip, config, info) for clip in clips]
    scored = [i for i, result in enumerate(results) if result is None]
    if not scored:
        return results
    with Timer() as timer, torch.inference_mode():
        out = model.forward_clips([images_to_tensor(clips[i].face_crops, device) for i in scored])
        clip_logits = out.clip_logit.float().cpu().numpy()  # (B,)
        all_frame_logits = out.frame_logits.float().cpu().numpy()  # (B, T_max)
    for row, i in enumerate(scored):
        clip = clips[i]
        clip_logit, frame_logits = float(clip_logits[row]), all_frame_logits[row, : clip.n_frames]
        p = sigmoid(clip_logit)
        scores = (1.0 / (1.0 + np.exp(-frame_logits))).astype(np.float32)  # (T,)
        branch = BranchResult(
            "triage", "ok", info, score=p,
            features=triage_features(clip_logit, frame_logits),
            details={"frames": int(clip.n_frames), "face_coverage": float(clip.face_coverage), "batch_size": len(scored)},
            timing_ms=timer.ms,
            item_scores=scores,
        )
        results[i] = TriageResult(branch, scores, early_exit(p, config))
    return results
