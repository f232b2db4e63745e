"""CompressionResilient: `pipeline.visual` behind a handle (versioned weights, `@serve.batch`), and its heat-maps."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments.batching import answer_batch, resolve, submit
from deployments.weights import VersionedModel
from pipeline.config import VisualConfig, VisualDeploymentConfig, stage_part
from pipeline.explain import Heatmap, explain_crops
from pipeline.results import BranchResult, KeyframeResult, ModelInfo
from pipeline.visual import run_visual


@serve.deployment(name="CompressionResilient", ray_actor_options={"num_cpus": 0.15})
class CompressionResilientDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        self.weights = VersionedModel("CompressionResilient", "compression_resilient", weights_dir)
        self.reconfigure({})  # serves the default version until a user_config names another

    def reconfigure(self, user_config: dict) -> None:
        config = VisualDeploymentConfig.model_validate(user_config or {})
        self.weights.apply(config)
        config.apply_to(self._batched)
        self.config: VisualConfig = stage_part(config, VisualConfig)

    def _run_batch(self, bundle: Any, clips: list, keyframes: list[KeyframeResult | None]) -> list[BranchResult]:
        return run_visual(
            bundle.model, clips, keyframes, self.config, self.weights.device, self.weights.info(bundle), bundle.ood,
        )

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, clips: list, keyframes: list) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, clips, keyframes)

    async def __call__(self, clip: Any, keyframes: KeyframeResult | None = None, pin: str | None = None) -> BranchResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, await resolve(clip), keyframes)

    async def explain(self, crops: np.ndarray, pin: str | None = None) -> tuple[list[Heatmap], ModelInfo]:
        """Heat-maps of where the model looked on face crops `(K, S, S, 3)` (the web page's, on request);
        `pin` names the version that scored them, so the map explains that answer."""
        bundle = self.weights.choose(pin)
        maps = await asyncio.to_thread(explain_crops, bundle.model, np.asarray(crops), self.weights.device)
        return maps, self.weights.info(bundle)

    def info(self):
        return self.weights.info()
