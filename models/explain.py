"""Where a detector looked: occlusion sensitivity (Zeiler & Fergus 2014) with Captum.

A window slides over the image; under it the image is replaced by a heavily blurred copy of
itself (colour and layout kept, fine detail and the noise residual the SRM stream reads removed),
and the drop of the fake logit is credited to the pixels the window covered. Positive: that
region pushed the model towards "fake"; negative: towards "real". It is the model's own answer
to "what if this part looked different", not a decoration: it costs one forward pass per window
position (7 x 7 at the defaults on a 128-pixel crop), so it is computed on request only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def blurred(images: Tensor, sigma: float = 6.0) -> Tensor:
    """(B, C, H, W) -> the same images under a separable Gaussian blur (reflect-padded)."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(images.shape[1], 1, 1, 1)  # (C, 1, 1, K)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k, groups=images.shape[1])
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), k.transpose(-1, -2), groups=images.shape[1])


def occlusion_maps(
    logit: Callable[[Tensor], Tensor], images: Tensor, window: int = 32, stride: int = 16, batch: int = 64,
) -> np.ndarray:
    """(B, 3, H, W) float images -> (B, H, W) float32: the logit's drop when each region is blurred away.

    `logit` maps a batch of images to one fake logit each. Captum is imported here, on request,
    so a replica that never explains pays nothing for it.
    """
    from captum.attr import Occlusion

    with torch.no_grad():
        attributions = Occlusion(logit).attribute(
            images, sliding_window_shapes=(images.shape[1], window, window), strides=(images.shape[1], stride, stride),
            baselines=blurred(images), perturbations_per_eval=batch,
        )  # (B, 3, H, W), the same value on every channel of a pixel
    return attributions.mean(dim=1).float().cpu().numpy()
