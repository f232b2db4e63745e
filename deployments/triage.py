"""FastTriage: a cheap clip-level score on every sampled face crop, and the early exit."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field, model_validator
from ray import serve

from deployments.common import (
    BatchConfig,
    BranchResult,
    Timer,
    TriageResult,
    VersionedModel,
    WeightsConfig,
    answer_batch,
    configure_torch_threads,
    images_to_tensor,
    keep_freed_memory,
    sigmoid,
    submit,
)
from media import Clip
from models.fusion import triage_features


class TriageConfig(WeightsConfig, BatchConfig):
    """user_config of FastTriage. The clip exits early when p_triage < low or > high."""

    early_exit_low: float = Field(0.02, ge=0.0, le=1.0)
    early_exit_high: float = Field(0.98, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> "TriageConfig":
        if self.early_exit_low > self.early_exit_high:
            raise ValueError("early_exit_low must not exceed early_exit_high")
        return self


@serve.deployment(name="FastTriage", ray_actor_options={"num_cpus": 1})
class FastTriageDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        configure_torch_threads()
        keep_freed_memory()
        self.weights = VersionedModel("FastTriage", "fast_triage", weights_dir)
        self.config = TriageConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = TriageConfig.model_validate(user_config or {})
        self.weights.apply(self.config)
        self.config.apply_to(self._batched)

    def _run(self, bundle, clip: Clip) -> TriageResult:
        return self._run_batch(bundle, [clip])[0]

    def _run_batch(self, bundle, clips: list[Clip]) -> list[TriageResult]:
        """One forward pass over every clip with frames (packed: no clip reads another's or padding)."""
        cfg = self.config
        info = self.weights.info(bundle)
        results: list[TriageResult | None] = [
            None if clip.n_frames else TriageResult(BranchResult("triage", "skipped", info, reason="no video frames"))
            for clip in clips
        ]
        scored = [i for i, clip in enumerate(clips) if clip.n_frames]
        if not scored:
            return results
        with Timer() as timer, torch.inference_mode():
            out = bundle.model.forward_clips([images_to_tensor(clips[i].face_crops, self.weights.device) for i in scored])
            clip_logits = out.clip_logit.float().cpu().numpy()  # (B,)
            all_frame_logits = out.frame_logits.float().cpu().numpy()  # (B, T_max)
        for row, i in enumerate(scored):
            clip = clips[i]
            n, clip_logit, frame_logits = clip.n_frames, float(clip_logits[row]), all_frame_logits[row, : clip.n_frames]
            p = sigmoid(clip_logit)
            early = "real" if p < cfg.early_exit_low else "fake" if p > cfg.early_exit_high else None
            branch = BranchResult(
                "triage", "ok", info, score=p,
                features=triage_features(clip_logit, frame_logits),
                details={"frames": int(n), "face_coverage": clip.meta.face_coverage, "batch_size": len(scored)},
                timing_ms=timer.ms,
            )
            scores = (1.0 / (1.0 + np.exp(-frame_logits))).astype(np.float32)
            results[i] = TriageResult(branch, scores, early)
        return results

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, clips: list[Clip]) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, clips)

    async def __call__(self, clip: Clip, pin: str | None = None) -> TriageResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, clip)

    def info(self):
        return self.weights.info()
