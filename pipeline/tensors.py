"""Arrays of a decoded clip -> the tensors the models read: one conversion for replicas, training and bench."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def images_to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; copies once (object-store arrays are read-only)."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # (N, H, W, 3)
    return t.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32).div_(255.0)


def lips_to_tensor(lips: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(T, 20, 2) lip trajectory -> float32."""
    return torch.from_numpy(np.array(lips, np.float32)).to(device)


def mouths_to_tensor(mouths: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(T, 48, 96) uint8 mouth crops -> float in [0, 1]."""
    return torch.from_numpy(np.array(mouths, np.float32) / 255.0).to(device)


def times_to_tensor(timestamps: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(T,) seconds -> float32."""
    return torch.from_numpy(np.array(timestamps, np.float32)).to(device)


def audio_to_tensor(audio: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(N,) -> float32."""
    return torch.from_numpy(np.array(audio, np.float32)).to(device)


def pick_device() -> str:
    """CUDA when this process was given a GPU and one is visible, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"
