"""How much fine detail a face crop holds: whether a face model has anything to read in it.

A face-forensics model reads texture, blending edges and compression traces; a face blown up from a
thumbnail, or blurred past recognition, carries none of them, and what such a model answers on it is a
guess about the blur. `face_detail` measures it from the crop's grey-level spectrum: the share of the
(mean-removed, Hann-windowed) power above `cycles_per_px`. At 1/8 cycle per pixel of a 128 px crop that
is the detail a 32 px thumbnail of the crop cannot hold, so a face enlarged from one scores near 0 and
any face seen at its own resolution well above (sensor noise and compression add to it, never remove).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DETAIL_CYCLES_PER_PX = 0.125  # 32 px of a 128 px crop: the Nyquist frequency of a 32 px thumbnail


@lru_cache(maxsize=8)
def _window_and_mask(height: int, width: int, cycles_per_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Hann window, and over the half spectrum `rfft2` returns: the mask above `cycles_per_px` and each
    column's weight (columns other than 0 and Nyquist stand for two, themselves and their mirror)."""
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    fx = np.fft.rfftfreq(width)
    radius = np.hypot(np.fft.fftfreq(height)[:, None], fx[None, :])
    weight = np.full(fx.size, 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return window, radius > cycles_per_px, np.broadcast_to(weight, radius.shape)


def face_detail(crops: np.ndarray, cycles_per_px: float = DETAIL_CYCLES_PER_PX) -> np.ndarray:
    """(K,) share of each crop's spectral power above `cycles_per_px`, in [0, 1], for `crops` (K, H, W, 3) uint8
    RGB or (K, H, W) grey; 0 for a flat crop."""
    crops = np.asarray(crops)
    if crops.ndim == 4:
        grey = crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif crops.ndim == 3:
        grey = crops.astype(np.float32)
    else:
        raise ValueError(f"crops must be (K, H, W, 3) or (K, H, W), got {crops.shape}")
    window, high, weight = _window_and_mask(grey.shape[1], grey.shape[2], float(cycles_per_px))
    centred = grey - grey.mean(axis=(1, 2), keepdims=True)
    spectrum = np.fft.rfft2(centred * window)
    power = (spectrum.real**2 + spectrum.imag**2) * weight
    total = power.sum(axis=(1, 2), dtype=np.float64)
    above = power[:, high].sum(axis=1, dtype=np.float64)
    return np.where(total > 0, above / np.maximum(total, 1e-12), 0.0)


def face_and_surround_detail(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) and (K,): `face_detail` of each face crop `(K, H, W, 3)`, and of its top quarter (the hair and the
    scene above the head), the two measures the visual stage compares with its minimums."""
    crops = np.asarray(crops)
    return face_detail(crops), face_detail(crops[:, : crops.shape[1] // 4])
