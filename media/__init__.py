"""Media decoding and analysis for SpectraShield: bytes in, `Clip` out, plus keyframe selection.

No Ray and no torch here, so decoding can be tested and benchmarked on its own.
"""

from media import errors
from media.clip import AUDIO_SAMPLE_RATE, FACE_CROP_SIZE, MOUTH_CROP_SHAPE, N_LIP_POINTS, Clip, ClipMeta, MediaKind
from media.decode import DecodeConfig, decode_media
from media.errors import MediaError, MediaTooLargeError, NotMediaError, UnusableMediaError
from media.faces import FaceAnalyzer, FaceTrack, default_analyzer, landmark_model_path
from media.keyframes import Hotspot, Keyframe, KeyframeSelection, find_hotspots, select_keyframes

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "FACE_CROP_SIZE",
    "MOUTH_CROP_SHAPE",
    "N_LIP_POINTS",
    "Clip",
    "ClipMeta",
    "DecodeConfig",
    "FaceAnalyzer",
    "FaceTrack",
    "Hotspot",
    "Keyframe",
    "KeyframeSelection",
    "MediaError",
    "MediaKind",
    "MediaTooLargeError",
    "NotMediaError",
    "UnusableMediaError",
    "decode_media",
    "default_analyzer",
    "errors",
    "find_hotspots",
    "landmark_model_path",
    "select_keyframes",
]
