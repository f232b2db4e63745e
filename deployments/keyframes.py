"""KeyframeSelector: `pipeline.keyframes` behind a handle; its motion half runs beside triage."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from deployments.batching import resolve
from deployments.placement import replica_placement
from pipeline.config import KeyframeConfig
from pipeline.keyframes import ALGORITHM_VERSION, motion, select_keyframes
from pipeline.results import KeyframeResult, ModelInfo, Motion


@serve.deployment(name="KeyframeSelector", ray_actor_options={"num_cpus": 0.1})
class KeyframeSelectorDeployment:
    def __init__(self) -> None:
        self.config = KeyframeConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = KeyframeConfig.model_validate(user_config or {})

    async def motion(self, clip: Any) -> Motion:
        """Optical-flow statistics per frame: the orchestration asks for them while FastTriage scores the frames."""
        return await asyncio.to_thread(motion, await resolve(clip))

    async def __call__(self, clip: Any, frame_scores: np.ndarray, motion: Motion | None = None) -> KeyframeResult:
        clip = await resolve(clip)
        return await asyncio.to_thread(select_keyframes, clip, frame_scores, self.config, motion, self.info())

    def info(self) -> ModelInfo:
        return ModelInfo(
            deployment="KeyframeSelector", version=ALGORITHM_VERSION, trained=None, placement=replica_placement()
        )
