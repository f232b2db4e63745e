"""FastTriage: a cheap clip-level score on every sampled face crop, and the early exit."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field, model_validator
from ray import serve

from deployments.common import (
    BranchResult,
    Timer,
    TriageResult,
    VersionedModel,
    WeightsConfig,
    configure_torch_threads,
    images_to_tensor,
    sigmoid,
)
from media import Clip
from models.fusion import triage_features


class TriageConfig(WeightsConfig):
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
        self.weights = VersionedModel("FastTriage", "fast_triage", weights_dir)
        self.config = TriageConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = TriageConfig.model_validate(user_config or {})
        self.weights.apply(self.config)

    def _run(self, bundle, clip: Clip) -> TriageResult:
        cfg = self.config
        info = self.weights.info(bundle)
        if clip.n_frames == 0:
            return TriageResult(BranchResult("triage", "skipped", info, reason="no video frames"))
        with Timer() as timer, torch.inference_mode():
            frames = images_to_tensor(clip.face_crops, self.weights.device).unsqueeze(0)  # (1, T, 3, H, W)
            out = bundle.model(frames)
            clip_logit = float(out.clip_logit[0])
            frame_logits = out.frame_logits[0].float().cpu().numpy()  # (T,)
        p = sigmoid(clip_logit)
        early = "real" if p < cfg.early_exit_low else "fake" if p > cfg.early_exit_high else None
        branch = BranchResult(
            "triage", "ok", info, score=p,
            features=triage_features(clip_logit, frame_logits),
            details={"frames": int(clip.n_frames), "face_coverage": clip.meta.face_coverage},
            timing_ms=timer.ms,
        )
        scores = (1.0 / (1.0 + np.exp(-frame_logits))).astype(np.float32)
        return TriageResult(branch, scores, early)

    async def __call__(self, clip: Clip, pin: str | None = None) -> TriageResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await asyncio.to_thread(self._run, bundle, clip)

    def info(self):
        return self.weights.info()
