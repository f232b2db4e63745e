"""CompressionResilient: two-stream CNN + denoising-autoencoder error on the keyframes' face crops."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field
from ray import serve

from deployments.common import (
    BranchResult,
    Timer,
    VersionedModel,
    WeightsConfig,
    configure_torch_threads,
    images_to_tensor,
    sigmoid,
)
from deployments.keyframes import KeyframeResult
from media import Clip
from models.fusion import visual_features


class CompressionConfig(WeightsConfig):
    """user_config of CompressionResilient."""

    max_crops: int = Field(8, ge=1, le=128)  # used when no keyframes were selected (images)


@serve.deployment(name="CompressionResilient", ray_actor_options={"num_cpus": 1})
class CompressionResilientDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        configure_torch_threads()
        self.weights = VersionedModel("CompressionResilient", "compression_resilient", weights_dir)
        self.config = CompressionConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = CompressionConfig.model_validate(user_config or {})
        self.weights.apply(self.config)

    def _frame_indices(self, clip: Clip, keyframes: KeyframeResult | None) -> np.ndarray:
        if keyframes is not None and keyframes.keyframes:
            return np.asarray(keyframes.indices, dtype=np.int64)
        return np.linspace(0, clip.n_frames - 1, min(clip.n_frames, self.config.max_crops)).round().astype(np.int64)

    def _run(self, bundle, clip: Clip, keyframes: KeyframeResult | None) -> BranchResult:
        info = self.weights.info(bundle)
        if clip.n_frames == 0:
            return BranchResult("visual", "skipped", info, reason="no video frames")
        idx = np.unique(self._frame_indices(clip, keyframes))
        with Timer() as timer, torch.inference_mode():
            out = bundle.model(images_to_tensor(clip.face_crops[idx], self.weights.device))  # (K, 3, S, S)
            logits = out.logit.float().cpu().numpy()  # (K,)
            embeddings = out.embedding.float().cpu().numpy()  # (K, E)
            errors = out.recon_error.float().cpu().numpy()  # (K,)
        faces = int(clip.face_found[idx].sum())
        return BranchResult(
            "visual", "ok", info,
            score=sigmoid(float(logits.mean())),
            reason=None if faces else "no face found: analysed the centre of the frame",
            features=visual_features(logits, embeddings, errors),
            details={
                "frames_analyzed": int(len(idx)),
                "frames_with_face": faces,
                "frame_times": [round(float(clip.timestamps[i]), 3) for i in idx],
                "max_frame_score": sigmoid(float(logits.max())),
                "reconstruction_error": float(errors.mean()),
            },
            timing_ms=timer.ms,
        )

    async def __call__(self, clip: Clip, keyframes: KeyframeResult | None = None, pin: str | None = None) -> BranchResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await asyncio.to_thread(self._run, bundle, clip, keyframes)

    def info(self):
        return self.weights.info()
