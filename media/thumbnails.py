"""JPEG thumbnails of an upload's frames at given times: what the web page shows for keyframes.

Decoded again from the upload with the decoder's own path (same budgets, allow-lists, rotation and
sampling grid; faces skipped), so a thumbnail is the frame the models saw at that time.
"""

from __future__ import annotations

import cv2
import numpy as np

from media.clip import nearest_frames
from media.config import DecodeConfig
from media.decode import decode_media


def thumbnails_at(data: bytes, times: list[float], config: DecodeConfig = DecodeConfig(), side: int = 320) -> list[bytes]:
    """One JPEG per time (the sampled frame nearest it), at most `side` pixels long; [] for audio."""
    if not times:
        return []
    clip = decode_media(data, config.model_copy(update={"analyze_faces": False}))
    return jpeg_thumbnails(clip.frames, clip.timestamps, times, side)


def jpeg_thumbnails(frames: np.ndarray, timestamps: np.ndarray, times: list[float], side: int = 320) -> list[bytes]:
    """JPEGs of the frames `(T, H, W, 3)` RGB nearest `times`, at most `side` pixels long; [] without frames."""
    if not len(frames):
        return []
    out = []
    for j in nearest_frames(timestamps, times):
        frame = frames[j]  # (H, W, 3) RGB
        scale = min(1.0, side / max(frame.shape[:2]))
        if scale < 1.0:
            frame = cv2.resize(frame, (max(round(frame.shape[1] * scale), 1), max(round(frame.shape[0] * scale), 1)),
                               interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            out.append(jpeg.tobytes())
    return out
