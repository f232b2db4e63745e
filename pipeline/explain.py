"""Heat-maps of where the visual branch looked, for the web page: face crops in, JPEG overlays out.

The crops are the very ones the visual branch scored (`media.clip.face_crops_at` picks them from the
decoded clip at the keyframe times); the map is `models.explain.occlusion_maps` on the served visual model.
Red: blurring that region away lowers the fake score (evidence of a fake); blue: it raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models import CompressionResilientDetector
from models.explain import occlusion_maps
from pipeline.tensors import images_to_tensor

MIN_SCALE = 0.25  # logit drop drawn at full strength at least this large: a flat map stays faint, not amplified noise
SIDE = 256  # the overlay's side in pixels (crops are 128: doubled for the eye)


@dataclass(frozen=True)
class Heatmap:
    jpeg: bytes  # the crop with the map blended over it
    peak: float  # largest logit drop (towards "fake") in the map
    trough: float  # most negative (towards "real")


def overlay(crop: np.ndarray, heat: np.ndarray, side: int = SIDE) -> bytes:
    """JPEG of `crop` (H, W, 3) RGB with `heat` (H, W) blended in: red positive, blue negative, opacity by size."""
    scale = max(float(np.abs(heat).max()), MIN_SCALE)
    alpha = np.clip(np.abs(heat) / scale, 0.0, 1.0)[..., None] * 0.65  # (H, W, 1)
    colour = np.where(heat[..., None] >= 0, np.array([230, 30, 30], np.float32), np.array([30, 90, 230], np.float32))
    blended = crop.astype(np.float32) * (1 - alpha) + colour * alpha
    image = cv2.resize(blended.clip(0, 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("could not encode the heat-map")
    return jpeg.tobytes()


def explain_crops(model: CompressionResilientDetector, crops: np.ndarray, device: str = "cpu") -> list[Heatmap]:
    """(K, S, S, 3) uint8 face crops -> one heat-map overlay per crop, from `model`'s own fake logit."""
    model.eval()
    maps = occlusion_maps(lambda x: model(x).logit, images_to_tensor(crops, device))  # (K, S, S)
    return [Heatmap(overlay(c, m), float(m.max()), float(m.min())) for c, m in zip(crops, maps, strict=True)]
