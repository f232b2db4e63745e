"""The decoded unit of work that flows through the object store from MediaDecoder to every branch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

MediaKind = Literal["video", "image", "audio"]

AUDIO_SAMPLE_RATE = 16_000
FACE_CROP_SIZE = 128  # aligned face crop side, pixels
MOUTH_CROP_SHAPE = (48, 96)  # mouth ROI (height, width), grayscale
N_LIP_POINTS = 20  # dlib points 48..67
INNER_LIP_TOP, INNER_LIP_BOTTOM = 62 - 48, 66 - 48  # rows of `Clip.lip_trajectory`: the inner lips' middle points


@dataclass
class Keyframe:
    index: int  # position in the clip's sampled frames
    t: float  # seconds
    score: float  # frame score from triage, in [0, 1]


@dataclass
class Hotspot:
    start: float  # seconds, time of the first frame in the run
    end: float  # seconds, time of the last frame in the run plus one grid step
    score: float  # mean frame score over the run


@dataclass
class ClipMeta:
    """What the container says plus what analysis found; cheap to copy, JSON-friendly."""

    kind: MediaKind
    duration_s: float
    native_fps: float | None  # average frame rate of the video stream; None for image/audio
    width: int  # display width after rotation; 0 for audio
    height: int  # display height after rotation; 0 for audio
    rotation: int  # degrees applied to make frames upright (0, 90, 180, 270)
    has_audio: bool
    has_video: bool
    face_coverage: float  # fraction of sampled frames with a face (detected or tracked)
    container: str
    video_codec: str | None = None
    audio_codec: str | None = None
    variable_frame_rate: bool = False
    n_frames: int = 0  # sampled frames in the Clip
    size_bytes: int = 0
    faces_seen: int = 0  # most faces found in one detected frame; the face track follows the most prominent
    face_chosen_by: str = "prominence"  # or "speech": of several faces, a less prominent one that speaks


@dataclass
class Clip:
    """Arrays for one upload. Shapes use T = sampled frames (1 for images, 0 for audio-only).

    Every per-frame array has a leading T axis, so branches can index by keyframe.
    Frames without a face have NaN landmarks and `face_found == False`; their face crop
    is the centre square of the frame so that visual models always get an input.
    """

    meta: ClipMeta
    # (T, H, W, 3) uint8 RGB at analysis resolution; None in a Clip made for transport
    # (`without_frames`): no served stage reads full frames, and they are ~90% of the bytes.
    frames: np.ndarray | None
    timestamps: np.ndarray  # (T,) float64 seconds of each sampled frame
    face_found: np.ndarray  # (T,) bool, detected or tracked
    face_boxes: np.ndarray  # (T, 4) float32 x0, y0, x1, y1 in frame pixels; NaN without a face
    landmarks: np.ndarray  # (T, 68, 2) float32 in frame pixels; NaN without a face
    face_crops: np.ndarray  # (T, FACE_CROP_SIZE, FACE_CROP_SIZE, 3) uint8 RGB, eye-aligned
    mouth_crops: np.ndarray  # (T, *MOUTH_CROP_SHAPE) uint8 grayscale mouth ROI; zeros without a face
    lip_trajectory: np.ndarray  # (T, N_LIP_POINTS, 2) float32 lips, centred on the mouth, scaled by inter-ocular distance; 0 without a face
    # (T, h, w) uint8 grey frames, longer side <= media.keyframes.FLOW_MAX_SIDE: keyframe selection's optical-flow input
    flow_frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.uint8))
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (N,) float32 mono, AUDIO_SAMPLE_RATE
    sample_rate: int = AUDIO_SAMPLE_RATE

    @property
    def n_frames(self) -> int:
        return int(self.timestamps.shape[0])

    # The stage functions of `pipeline` read these three from a Clip or from training's cached arrays.
    @property
    def kind(self) -> MediaKind:
        return self.meta.kind

    @property
    def has_audio(self) -> bool:
        return self.meta.has_audio

    @property
    def face_coverage(self) -> float:
        return self.meta.face_coverage

    def without_frames(self) -> Clip:
        """This clip minus the full-resolution frames: what MediaDecoder puts in the object store.

        A 10 s 720p clip drops from 77 MB to 7.5 MB (pickled); every branch reads face crops, mouth crops,
        landmarks, flow frames or audio, never `frames`.
        """
        return replace(self, frames=None)


def nearest_frames(timestamps: np.ndarray, times: list[float]) -> list[int]:
    """Index of the sampled frame nearest each time (`timestamps` non-empty)."""
    stamps = np.asarray(timestamps, np.float64)
    return [int(np.argmin(np.abs(stamps - t))) for t in times]


def face_crops_at(clip: Clip, times: list[float]) -> list[np.ndarray | None]:
    """The face crop (S, S, 3) uint8 the visual branch scored at the sampled frame nearest each time,
    or None where that frame has no face (or the clip no frames)."""
    if not clip.n_frames:
        return [None] * len(times)
    return [np.array(clip.face_crops[j]) if clip.face_found[j] else None for j in nearest_frames(clip.timestamps, times)]
