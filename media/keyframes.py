"""Pick a few diverse, suspicious keyframes and the suspicious time segments of a clip.

The expensive branches (compression-resilient CNN, AV alignment) only look at k frames, so
the frames should differ from one another (motion and suspicion) while each being the
most suspicious of its kind. Dense optical flow (DIS, OpenCV's fastest preset) describes how each frame moves, KMeans
groups frames by [motion, suspicion, time], and each group contributes its highest-scoring
frame. Time is part of the descriptor so that a static clip with flat scores still yields
keyframes spread over its length instead of k neighbours.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from media.clip import Hotspot, Keyframe

FLOW_MAX_SIDE = 160  # optical flow runs on grayscale frames this long: motion statistics, not detail
_TIME_WEIGHT = 1.0  # time spreads keyframes over the clip as much as any motion statistic
_SCORE_SCALE = 0.1  # a 0.1 difference in P(fake) counts as one unit; scores are never standardized
_SCORE_TIE = 0.02  # within a cluster, scores this close to its best are equally suspicious


@dataclass
class KeyframeSelection:
    keyframes: list[Keyframe]  # sorted by time
    hotspots: list[Hotspot]  # sorted by time
    # (T,) float32 mean optical-flow magnitude into each frame, in pixels at FLOW_MAX_SIDE scale;
    # frame 0 copies frame 1
    motion: np.ndarray


def select_keyframes(
    frames: np.ndarray,
    timestamps: np.ndarray,
    frame_scores: np.ndarray,
    k: int = 4,
    hotspot_threshold: float = 0.5,
    min_hotspot_s: float = 0.0,
    seed: int = 0,
    motion: tuple[np.ndarray, np.ndarray] | None = None,
) -> KeyframeSelection:
    """Up to `k` keyframes (exactly min(k, T)) and the runs of frames scoring >= `hotspot_threshold`.

    frames: `(T, H, W, 3)` uint8 RGB, or `(T, h, w)` grey such as `Clip.flow_frames` (the same
    selection: flow runs on `small_gray` of either); timestamps: `(T,)` seconds, increasing; frame_scores:
    `(T,)` in [0, 1]. Hotspots shorter than `min_hotspot_s` are dropped. Deterministic for a
    given `seed`. `motion`: `motion_statistics(frames)` when already computed (it needs no
    scores, so the served graph computes it while triage scores the frames).
    """
    n_frames = len(frames)
    timestamps = np.asarray(timestamps, np.float64)
    scores = np.asarray(frame_scores, np.float64)
    if frames.ndim not in (3, 4) or len(timestamps) != n_frames or len(scores) != n_frames:
        raise ValueError(
            f"frames (T, H, W, 3) or (T, h, w), timestamps (T,) and frame_scores (T,) must agree; got "
            f"{frames.shape}, {timestamps.shape}, {scores.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_frames == 0:
        return KeyframeSelection(keyframes=[], hotspots=[], motion=np.zeros(0, np.float32))
    magnitude_mean, magnitude_std = motion_statistics(frames) if motion is None else motion  # (T,), (T,)
    if len(magnitude_mean) != n_frames or len(magnitude_std) != n_frames:
        raise ValueError(f"motion statistics cover {len(magnitude_mean)} frames, the clip {n_frames}")
    change = np.abs(np.diff(magnitude_mean, prepend=magnitude_mean[0]))  # (T,)
    motion = np.stack([magnitude_mean, magnitude_std, change], axis=1)  # (T, 3)
    chosen = _pick_diverse(motion, timestamps, scores, min(k, n_frames), seed)
    keyframes = [Keyframe(index=int(i), t=float(timestamps[i]), score=float(scores[i])) for i in sorted(chosen)]
    hotspots = find_hotspots(timestamps, scores, hotspot_threshold, min_hotspot_s)
    return KeyframeSelection(keyframes=keyframes, hotspots=hotspots, motion=magnitude_mean.astype(np.float32))


def motion_statistics(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of dense optical-flow magnitude from each frame's predecessor `(T,)`, `(T,)`.

    Frame 0 has no predecessor and copies frame 1's values, so it does not look like a
    motion outlier of its own; a single frame gets zeros.

    The flow is DIS at its ULTRAFAST preset. It replaced Farneback (pyramid 3, window 15),
    which cost 2.3 ms per 160x90 pair against DIS's 0.2 ms, a fifth of a 10 s 720p clip's
    pipeline time, for per-frame mean magnitudes that correlate 0.99 with Farneback's
    (`bench/changes.md`).
    """
    n_frames = len(frames)
    means = np.zeros(n_frames, np.float64)
    stds = np.zeros(n_frames, np.float64)
    previous = None
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)  # stateless between calls; cheap to make
    for i in range(n_frames):
        gray = small_gray(frames[i])  # (h, w) uint8
        if previous is not None:
            flow = dis.calc(previous, gray, None)  # (h, w, 2) float32
            magnitude = np.hypot(flow[..., 0], flow[..., 1])
            means[i], stds[i] = float(magnitude.mean()), float(magnitude.std())
        previous = gray
    if n_frames > 1:
        means[0], stds[0] = means[1], stds[1]
    return means, stds


def find_hotspots(
    timestamps: np.ndarray, scores: np.ndarray, threshold: float = 0.5, min_duration_s: float = 0.0
) -> list[Hotspot]:
    """Maximal runs of consecutive frames with score >= `threshold`, as time segments."""
    if len(timestamps) == 0:
        return []
    step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.0
    hot = np.concatenate([[False], np.asarray(scores) >= threshold, [False]])
    edges = np.flatnonzero(np.diff(hot.astype(np.int8)))  # run starts and (exclusive) ends, alternating
    hotspots = []
    for first, stop in zip(edges[::2], edges[1::2]):
        start, end = float(timestamps[first]), float(timestamps[stop - 1]) + step
        if end - start >= min_duration_s:
            hotspots.append(Hotspot(start=start, end=end, score=float(np.mean(scores[first:stop]))))
    return hotspots


def _pick_diverse(features: np.ndarray, timestamps: np.ndarray, scores: np.ndarray, k: int, seed: int) -> list[int]:
    """Indices of `k` distinct frames: the top-scoring frame of each KMeans cluster, topped up by score.

    Motion statistics are standardized (their units are arbitrary); scores are probabilities and
    keep a fixed scale, so near-constant scores (an unsure model) cannot dominate the clustering
    and collapse every keyframe into one stretch of the clip.
    """
    n_frames = len(features)
    if k >= n_frames:
        return list(range(n_frames))
    span = float(timestamps[-1] - timestamps[0]) or 1.0
    std = features.std(axis=0)
    standardized = (features - features.mean(axis=0)) / np.where(std > 1e-9, std, 1.0)  # (T, 3)
    # uniform time over [0, 1] has std 1/sqrt(12): rescale to unit variance, then weight
    relative_time = (timestamps - timestamps[0]) / span * np.sqrt(12.0) * _TIME_WEIGHT
    descriptor = np.column_stack([standardized, scores / _SCORE_SCALE, relative_time])  # (T, 5)
    from sklearn.cluster import KMeans  # here, not at import: MediaDecoder imports `small_gray` only
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate descriptors: fewer distinct clusters
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(descriptor)
    labels = kmeans.labels_
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        # The most suspicious frame; among near-ties the most representative one (nearest the centre).
        tied = members[scores[members] >= scores[members].max() - _SCORE_TIE]
        distance = np.linalg.norm(descriptor[tied] - kmeans.cluster_centers_[label], axis=1)
        chosen.append(int(tied[np.argmin(distance)]))
    for i in np.argsort(-scores, kind="stable"):  # clusters collapsed: fill with the most suspicious rest
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen


def small_gray(frame: np.ndarray) -> np.ndarray:
    """Grayscale with the longer side at most FLOW_MAX_SIDE; `(H, W, 3)` RGB or `(H, W)` grey in.

    A grey frame already that small comes back as it is (not a copy).
    """
    height, width = frame.shape[:2]
    scale = min(1.0, FLOW_MAX_SIDE / max(height, width, 1))
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        size = (max(round(width * scale), 1), max(round(height * scale), 1))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray
