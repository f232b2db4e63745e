"""KeyframeSelector: diverse, suspicious frames and hotspot ranges from motion + triage scores."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field
from ray import serve

from deployments.common import ModelInfo, Timer, configure_opencv_threads, replica_placement
from media import Clip, select_keyframes
from media.keyframes import Hotspot, Keyframe, motion_statistics

ALGORITHM_VERSION = "dis-kmeans-2"  # DIS optical flow (was Farneback in flow-kmeans-1)

Motion = tuple[np.ndarray, np.ndarray]  # mean and std of optical-flow magnitude per frame, (T,) each


class KeyframeConfig(BaseModel):
    """user_config of KeyframeSelector."""

    k: int = Field(4, ge=1, le=64)
    hotspot_threshold: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 0


@dataclass
class KeyframeResult:
    keyframes: list[Keyframe] = field(default_factory=list)
    hotspots: list[Hotspot] = field(default_factory=list)
    model: ModelInfo | None = None
    timing_ms: float = 0.0

    @property
    def indices(self) -> list[int]:
        return [k.index for k in self.keyframes]


@serve.deployment(name="KeyframeSelector", ray_actor_options={"num_cpus": 0.5})
class KeyframeSelectorDeployment:
    def __init__(self) -> None:
        configure_opencv_threads()
        self.config = KeyframeConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = KeyframeConfig.model_validate(user_config or {})

    def _run(self, clip: Clip, frame_scores: np.ndarray, motion: Motion | None = None) -> KeyframeResult:
        cfg = self.config
        with Timer() as timer:
            sel = select_keyframes(
                clip.flow_frames, clip.timestamps, frame_scores,
                k=cfg.k, hotspot_threshold=cfg.hotspot_threshold, seed=cfg.seed, motion=motion,
            )
        return KeyframeResult(sel.keyframes, sel.hotspots, self.info(), timer.ms)

    async def motion(self, clip: Clip) -> Motion:
        """Optical-flow statistics per frame: the costly half of a selection, and it needs no scores.

        The ingress asks for it while FastTriage scores the frames, then passes it to `__call__`.
        """
        return await asyncio.to_thread(motion_statistics, clip.flow_frames)

    async def __call__(self, clip: Clip, frame_scores: np.ndarray, motion: Motion | None = None) -> KeyframeResult:
        return await asyncio.to_thread(self._run, clip, frame_scores, motion)

    def info(self) -> ModelInfo:
        return ModelInfo(
            deployment="KeyframeSelector", version=ALGORITHM_VERSION, trained=None, placement=replica_placement()
        )
