"""Heat-maps of where the visual model looked: the occlusion map points at what drives the logit."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from models import load_bundle
from models.explain import blurred, occlusion_maps
from pipeline.explain import explain_crops, overlay
from pipeline.tensors import images_to_tensor

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def test_blur_keeps_colour_and_removes_detail() -> None:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    soft = blurred(images)
    assert soft.shape == images.shape
    assert torch.allclose(soft.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.02)
    assert soft.diff(dim=-1).abs().mean() < 0.1 * images.diff(dim=-1).abs().mean()


def test_the_map_points_at_the_region_that_drives_the_logit() -> None:
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    rows, cols = slice(20, 50), slice(80, 110)  # off-centre and off-diagonal: a transposed map would miss it

    def logit(x: torch.Tensor) -> torch.Tensor:  # fine texture in one region is the "fake" cue
        return 10 * x[:, :, rows, cols].std(dim=(1, 2, 3))

    maps = occlusion_maps(logit, images)
    assert maps.shape == (2, 128, 128)
    for m in maps:
        r, c = np.unravel_index(m.argmax(), m.shape)
        assert rows.start <= r < rows.stop and cols.start <= c < cols.stop, (r, c)
        assert m.max() > 0.5
        assert np.abs(m[100:, :40]).max() < 1e-6  # windows that never touch the region change nothing


def test_overlay_is_red_where_the_evidence_is(tmp_path) -> None:
    crop = np.full((128, 128, 3), 128, np.uint8)
    heat = np.zeros((128, 128), np.float32)
    heat[:, :64] = 2.0  # left half: towards fake
    heat[:, 64:] = -2.0  # right half: towards real
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(overlay(crop, heat), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert image.shape == (256, 256, 3)
    left, right = image[:, :100].reshape(-1, 3).mean(0), image[:, 156:].reshape(-1, 3).mean(0)
    assert left[0] > left[2] + 60 and right[2] > right[0] + 60


def test_the_served_model_map_is_faithful_to_the_model() -> None:
    """Blurring the region the map marks most fake lowers the served model's logit more than blurring the
    region it marks most real: the picture says what the model does (and is not flipped or transposed)."""
    model = load_bundle(WEIGHTS / "compression_resilient" / "v2").model.eval()  # the version the profiles serve
    rng = np.random.default_rng(3)
    crops = (rng.random((2, 128, 128, 3)) * 255).astype(np.uint8)
    crops[:, 40:90, 30:100] = cv2.GaussianBlur(crops[0, 40:90, 30:100], (9, 9), 3)  # smooth and noisy parts
    heat = explain_crops(model, crops)
    assert all(h.jpeg[:2] == b"\xff\xd8" and h.peak >= h.trough for h in heat)
    maps = occlusion_maps(lambda x: model(x).logit, images_to_tensor(crops))
    x = images_to_tensor(crops)
    with torch.no_grad():
        base = model(x).logit
        for i, m in enumerate(maps):
            window = np.lib.stride_tricks.sliding_window_view(m, (32, 32))[::16, ::16].mean(axis=(-1, -2))
            drops = []
            for r, c in (np.unravel_index(window.argmax(), window.shape), np.unravel_index(window.argmin(), window.shape)):
                y = x[i : i + 1].clone()
                y[..., r * 16 : r * 16 + 32, c * 16 : c * 16 + 32] = blurred(x[i : i + 1])[..., r * 16 : r * 16 + 32, c * 16 : c * 16 + 32]
                drops.append(float(base[i] - model(y).logit[0]))
            assert drops[0] > drops[1], (i, drops)
