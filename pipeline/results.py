"""What the stages return. No torch and no Ray here: the ingress reads these without loading either."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from media.clip import ClipMeta, Hotspot, Keyframe, MediaKind

BranchStatus = Literal["ok", "skipped", "failed"]
Motion = tuple[np.ndarray, np.ndarray]  # mean and std of optical-flow magnitude per frame, (T,) each


class StageInput(Protocol):
    """What the stages read of a decoded upload: a `media.Clip`, or training's cached `ClipArrays`."""

    kind: MediaKind
    has_audio: bool
    face_coverage: float
    face_crops: np.ndarray  # (T, S, S, 3) uint8
    face_found: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (T,) float64
    flow_frames: np.ndarray  # (T, h, w) uint8
    mouth_crops: np.ndarray  # (T, 48, 96) uint8
    lip_trajectory: np.ndarray  # (T, 20, 2) float32
    audio: np.ndarray  # (N,) float32
    sample_rate: int

    @property
    def n_frames(self) -> int: ...


class UnknownVersionError(ValueError):
    """A request pinned a weights version a deployment does not serve (HTTP 400)."""


@dataclass
class ModelInfo:
    """Which weights (or algorithm) answered a request; the response lists one per stage that ran."""

    deployment: str
    version: str | None
    trained: bool | None
    sha256: str | None = None
    requested_version: str | None = None
    error: str | None = None  # last failed reconfigure, while the previous version keeps serving
    placement: dict[str, Any] = field(default_factory=dict)  # replica id, node id, GPU ids of the answering replica
    canary: dict[str, Any] | None = None  # {"version", "fraction"} while a canary is configured


@dataclass
class BranchResult:
    """One modality's opinion. `features` is what Fusion consumes; `score` is P(fake) alone."""

    modality: str
    status: BranchStatus
    model: ModelInfo | None = None
    score: float | None = None
    reason: str | None = None
    code: str | None = None  # why it did not run, machine-readable: no_face, no_audio, no_video, branch_failed
    out_of_distribution: bool | None = None  # its input lies outside the authentic training data (None: not measured)
    features: np.ndarray | None = None  # (D,) float32
    details: dict[str, Any] = field(default_factory=dict)
    timing_ms: float = 0.0
    item_scores: np.ndarray | None = None  # P(fake) per frame (triage) or per crop (visual); not in the response


@dataclass
class TriageResult:
    branch: BranchResult
    frame_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (T,) P(fake) per frame
    early_exit: str | None = None  # "real" | "fake" when the clip is settled here


@dataclass
class KeyframeResult:
    keyframes: list[Keyframe] = field(default_factory=list)
    hotspots: list[Hotspot] = field(default_factory=list)
    model: ModelInfo | None = None
    timing_ms: float = 0.0

    @property
    def indices(self) -> list[int]:
        return [k.index for k in self.keyframes]


@dataclass
class AVResult:
    av: BranchResult  # synchrony of lips and speech
    audio: BranchResult  # audio spoofing, from the audio alone


@dataclass
class FusionResult:
    probability: float  # calibrated P(fake)
    model: ModelInfo | None = None
    gate_weights: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    timing_ms: float = 0.0


@dataclass
class Decoded:
    """The decode stage's answer as the orchestration sees it: small metadata plus an opaque clip.

    `clip` is whatever the other stages take: the `Clip` itself in-process, a reference to the
    object-store copy when served (so the orchestrating process never pulls the frames).
    """

    meta: ClipMeta
    n_frames: int
    clip: Any
    model: ModelInfo | None = None


def sigmoid(x: float) -> float:
    """P(fake) from a logit; math.exp(-x) overflows only below -709, where P is 0 to double precision."""
    x = float(x)
    return 0.0 if x < -700 else 1.0 / (1.0 + math.exp(-x))
