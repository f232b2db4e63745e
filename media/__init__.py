"""Media decoding and analysis for SpectraShield: bytes in, `Clip` out, plus keyframe selection.

No Ray and no torch here, so decoding can be tested and benchmarked on its own.

Names are imported on first use (PEP 562): a model replica that only needs `Clip` does not pay
for PyAV, dlib and scikit-learn (about 70 MB of private memory per process).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AUDIO_SAMPLE_RATE": "media.clip",
    "FACE_CROP_SIZE": "media.clip",
    "MOUTH_CROP_SHAPE": "media.clip",
    "N_LIP_POINTS": "media.clip",
    "Clip": "media.clip",
    "ClipMeta": "media.clip",
    "MediaKind": "media.clip",
    "DecodeConfig": "media.config",
    "decode_media": "media.decode",
    "MediaError": "media.errors",
    "MediaTooLargeError": "media.errors",
    "DecodeDeadlineError": "media.errors",
    "NotMediaError": "media.errors",
    "UnusableMediaError": "media.errors",
    "face_detail": "media.detail",
    "FaceAnalyzer": "media.faces",
    "FaceTrack": "media.faces",
    "default_analyzer": "media.faces",
    "landmark_model_path": "media.faces",
    "Hotspot": "media.clip",
    "Keyframe": "media.clip",
    "KeyframeSelection": "media.keyframes",
    "find_hotspots": "media.keyframes",
    "select_keyframes": "media.keyframes",
}

__all__ = sorted([*_EXPORTS, "errors"])


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("media.errors")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'media' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from media import errors
    from media.clip import (
        AUDIO_SAMPLE_RATE, FACE_CROP_SIZE, MOUTH_CROP_SHAPE, N_LIP_POINTS, Clip, ClipMeta, Hotspot, Keyframe, MediaKind,
    )
    from media.config import DecodeConfig
    from media.decode import decode_media
    from media.detail import face_detail
    from media.errors import DecodeDeadlineError, MediaError, MediaTooLargeError, NotMediaError, UnusableMediaError
    from media.faces import FaceAnalyzer, FaceTrack, default_analyzer, landmark_model_path
    from media.keyframes import KeyframeSelection, find_hotspots, select_keyframes
