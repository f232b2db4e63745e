"""Fusion: `pipeline.fuse` behind a handle (versioned weights, `@serve.batch`)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.batching import answer_batch, submit
from deployments.weights import VersionedModel
from pipeline.config import FusionDeploymentConfig
from pipeline.fuse import run_fusion
from pipeline.results import BranchResult, FusionResult


@serve.deployment(name="Fusion", ray_actor_options={"num_cpus": 0.1})
class FusionDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        self.weights = VersionedModel("Fusion", "fusion", weights_dir)
        self.reconfigure({})  # serves the default version until a user_config names another

    def reconfigure(self, user_config: dict) -> None:
        config = FusionDeploymentConfig.model_validate(user_config or {})
        self.weights.apply(config)
        config.apply_to(self._batched)

    def _run_batch(self, bundle: Any, requests: list[list[BranchResult]]) -> list[FusionResult]:
        return run_fusion(bundle.model, requests, self.weights.device, self.weights.info(bundle))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, requests: list[list[BranchResult]]) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, requests)

    async def __call__(self, branches: list[BranchResult], pin: str | None = None) -> FusionResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, branches)

    def info(self):
        return self.weights.info()
