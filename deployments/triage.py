"""FastTriage: `pipeline.triage` behind a handle (versioned weights, `@serve.batch`)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.batching import answer_batch, resolve, submit
from deployments.weights import VersionedModel
from pipeline.config import TriageConfig, TriageDeploymentConfig, stage_part
from pipeline.results import TriageResult
from pipeline.triage import run_triage


@serve.deployment(name="FastTriage", ray_actor_options={"num_cpus": 0.15})
class FastTriageDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        self.weights = VersionedModel("FastTriage", "fast_triage", weights_dir)
        self.reconfigure({})  # serves the default version until a user_config names another

    def reconfigure(self, user_config: dict) -> None:
        config = TriageDeploymentConfig.model_validate(user_config or {})
        self.weights.apply(config)
        config.apply_to(self._batched)
        self.config: TriageConfig = stage_part(config, TriageConfig)

    def _run_batch(self, bundle: Any, clips: list) -> list[TriageResult]:
        return run_triage(bundle.model, clips, self.config, self.weights.device, self.weights.info(bundle))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, clips: list) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, clips)

    async def __call__(self, clip: Any, pin: str | None = None) -> TriageResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, await resolve(clip))

    def info(self):
        return self.weights.info()
