"""Shared input builders: realistic-shaped, seeded inputs for any registered model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from models import (
    AVAlignmentModel,
    CompressionResilientDetector,
    DenoisingAutoencoder,
    FastTriage,
    FusionModel,
)


def example_inputs(model: nn.Module, batch: int, seed: int = 0) -> tuple[Any, ...]:
    """Positional forward() arguments for `model`, B = batch, shaped like the decoder's Clip."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, FastTriage):
        return (torch.rand(batch, 4, 3, 128, 128, generator=g),)
    if isinstance(model, CompressionResilientDetector):
        return (torch.rand(batch, 3, 128, 128, generator=g),)
    if isinstance(model, DenoisingAutoencoder):
        return (torch.rand(batch, 3, 40, 36, generator=g),)  # not a multiple of the stride on purpose
    if isinstance(model, AVAlignmentModel):
        t = 6
        audio = torch.randn(batch, 8000, generator=g) * 0.1  # 0.5 s
        lips = torch.randn(batch, t, 20, 2, generator=g) * 0.3
        mouths = torch.rand(batch, t, 48, 96, generator=g)
        start = torch.rand(batch, 1, generator=g)
        frame_times = start + torch.arange(t).float() / 12.0  # (B, T)
        return (audio, lips, mouths, frame_times)
    if isinstance(model, FusionModel):
        features = {name: torch.randn(batch, dim, generator=g) for name, dim in model.config.modalities}
        present = torch.ones(batch, len(features), dtype=torch.bool)
        present[1:, -1] = False  # mixed masks across the batch
        if batch > 2:
            present[2, 1:] = False
        return (features, present)
    raise TypeError(f"no example inputs for {type(model).__name__}")


def output_tensors(out: Any) -> dict[str, Tensor]:
    """Every tensor a forward returns, by field name."""
    if isinstance(out, Tensor):
        return {"output": out}
    return {name: value for name, value in out._asdict().items()}


def slice_inputs(inputs: tuple[Any, ...], i: int) -> tuple[Any, ...]:
    """Item i of a batch of inputs, keeping the batch axis."""
    return tuple({k: v[i : i + 1] for k, v in x.items()} if isinstance(x, dict) else x[i : i + 1] for x in inputs)


@pytest.fixture
def make_inputs() -> Callable[..., tuple[Any, ...]]:
    return example_inputs


@pytest.fixture
def tensors_of() -> Callable[[Any], dict[str, Tensor]]:
    return output_tensors


@pytest.fixture
def item_of() -> Callable[[tuple[Any, ...], int], tuple[Any, ...]]:
    return slice_inputs
