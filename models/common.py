"""Small pieces shared by the visual models, so they all see images the same way."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def normalize_image(x: Tensor) -> Tensor:
    """Map (N, 3, H, W) [0, 1] RGB to ImageNet statistics, so imported backbones fit too."""
    mean = x.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize (N, C, H, W) to `size`; antialiased when shrinking, a no-op when it already fits.

    Deployments pass crops as decoded; each model resizes to what it was built for here.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
