"""CompressionResilient: two-stream CNN + denoising-autoencoder error on the keyframes' face crops."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field
from ray import serve

from deployments.common import (
    BatchConfig,
    BranchResult,
    Timer,
    VersionedModel,
    WeightsConfig,
    answer_batch,
    configure_torch_threads,
    images_to_tensor,
    keep_freed_memory,
    sigmoid,
    submit,
)
from deployments.keyframes import KeyframeResult
from media import Clip
from models.fusion import visual_features


class CompressionConfig(WeightsConfig, BatchConfig):
    """user_config of CompressionResilient."""

    max_crops: int = Field(8, ge=1, le=128)  # used when no keyframes were selected (images)


@serve.deployment(name="CompressionResilient", ray_actor_options={"num_cpus": 1})
class CompressionResilientDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        configure_torch_threads()
        keep_freed_memory()
        self.weights = VersionedModel("CompressionResilient", "compression_resilient", weights_dir)
        self.config = CompressionConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = CompressionConfig.model_validate(user_config or {})
        self.weights.apply(self.config)
        self.config.apply_to(self._batched)

    def _frame_indices(self, clip: Clip, keyframes: KeyframeResult | None) -> np.ndarray:
        if keyframes is not None and keyframes.keyframes:
            return np.asarray(keyframes.indices, dtype=np.int64)
        return np.linspace(0, clip.n_frames - 1, min(clip.n_frames, self.config.max_crops)).round().astype(np.int64)

    def _run(self, bundle, clip: Clip, keyframes: KeyframeResult | None) -> BranchResult:
        return self._run_batch(bundle, [clip], [keyframes])[0]

    def _run_batch(self, bundle, clips: list[Clip], keyframes: list[KeyframeResult | None]) -> list[BranchResult]:
        """One forward pass over the chosen crops of every clip with frames, split back per clip."""
        info = self.weights.info(bundle)
        results: list[BranchResult | None] = [None] * len(clips)
        chosen: list[tuple[int, np.ndarray]] = []  # (clip position, its frame indices)
        for i, (clip, kf) in enumerate(zip(clips, keyframes, strict=True)):
            if clip.n_frames == 0:
                results[i] = BranchResult("visual", "skipped", info, reason="no video frames")
            else:
                chosen.append((i, np.unique(self._frame_indices(clip, kf))))
        if not chosen:
            return results
        with Timer() as timer, torch.inference_mode():
            crops = np.concatenate([clips[i].face_crops[idx] for i, idx in chosen])  # (sum K, S, S, 3)
            out = bundle.model(images_to_tensor(crops, self.weights.device))  # (sum K, 3, S, S)
            logits = out.logit.float().cpu().numpy()  # (sum K,)
            embeddings = out.embedding.float().cpu().numpy()  # (sum K, E)
            errors = out.recon_error.float().cpu().numpy()  # (sum K,)
        start = 0
        for i, idx in chosen:
            clip, rows = clips[i], slice(start, start + len(idx))
            start += len(idx)
            faces = int(clip.face_found[idx].sum())
            results[i] = BranchResult(
                "visual", "ok", info,
                score=sigmoid(float(logits[rows].mean())),
                reason=None if faces else "no face found: analysed the centre of the frame",
                features=visual_features(logits[rows], embeddings[rows], errors[rows]),
                details={
                    "frames_analyzed": int(len(idx)),
                    "frames_with_face": faces,
                    "frame_times": [round(float(clip.timestamps[j]), 3) for j in idx],
                    "max_frame_score": sigmoid(float(logits[rows].max())),
                    "reconstruction_error": float(errors[rows].mean()),
                    "batch_size": len(chosen),
                },
                timing_ms=timer.ms,
            )
        return results

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, clips: list[Clip], keyframes: list) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, clips, keyframes)

    async def __call__(self, clip: Clip, keyframes: KeyframeResult | None = None, pin: str | None = None) -> BranchResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, clip, keyframes)

    def info(self):
        return self.weights.info()
