"""The keyframes stage: optical-flow motion + triage scores -> diverse suspicious keyframes and hotspots."""

from __future__ import annotations

import numpy as np

from media.keyframes import motion_statistics, select_keyframes as _select
from pipeline.config import KeyframeConfig
from pipeline.results import KeyframeResult, ModelInfo, Motion, StageInput
from pipeline.timing import Timer

ALGORITHM_VERSION = "dis-kmeans-2"  # DIS optical flow (was Farneback in flow-kmeans-1)


def motion(clip: StageInput) -> Motion:
    """Optical-flow statistics per frame: the costly half of a selection, and it needs no triage scores."""
    return motion_statistics(clip.flow_frames)


def select_keyframes(
    clip: StageInput, frame_scores: np.ndarray, config: KeyframeConfig,
    motion: Motion | None = None, info: ModelInfo | None = None,
) -> KeyframeResult:
    """Keyframes and hotspots of one clip; `motion` when computed beforehand (beside triage)."""
    with Timer() as timer:
        sel = _select(
            clip.flow_frames, clip.timestamps, frame_scores,
            k=config.k, hotspot_threshold=config.hotspot_threshold, seed=config.seed, motion=motion,
        )
    return KeyframeResult(sel.keyframes, sel.hotspots, info, timer.ms)
