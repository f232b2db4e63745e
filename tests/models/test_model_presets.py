"""Every registered preset: shapes, finiteness, gradients to every parameter, batch-vs-single."""

from __future__ import annotations

import pytest
import torch

from models import (
    MODELS,
    AVAlignmentModel,
    CompressionResilientDetector,
    DenoisingAutoencoder,
    FastTriage,
    FusionModel,
)

PRESETS = MODELS.names()
BATCH = 3


def expected_shapes(model: torch.nn.Module, inputs: tuple) -> dict[str, tuple[int, ...]]:
    b = BATCH
    if isinstance(model, FastTriage):
        return {"clip_logit": (b,), "frame_logits": (b, inputs[0].shape[1])}
    if isinstance(model, CompressionResilientDetector):
        s = model.config.dae_size
        return {"logit": (b,), "embedding": (b, model.config.embed_dim), "recon_error": (b,), "recon": (b, 3, s, s)}
    if isinstance(model, DenoisingAutoencoder):
        return {"output": tuple(inputs[0].shape)}
    if isinstance(model, AVAlignmentModel):
        return {"sync_logit": (b,), "offset_ms": (b,), "embedding": (b, model.config.d_model), "spoof_logit": (b,)}
    if isinstance(model, FusionModel):
        return {"logit": (b,), "probability": (b,), "gate_weights": (b, len(model.config.modalities))}
    raise TypeError(type(model).__name__)


def test_every_preset_is_covered() -> None:
    assert {"fast_triage", "compression_resilient", "av_alignment", "fusion", "denoising_autoencoder"} <= set(PRESETS)
    for name in PRESETS:
        if not name.endswith("_test"):
            assert f"{name}_test" in PRESETS, f"{name} has no tiny _test preset"


@pytest.mark.parametrize("name", PRESETS)
def test_output_shapes_and_finite(name: str, make_inputs, tensors_of) -> None:
    torch.manual_seed(0)
    model = MODELS.get(name)().eval()
    inputs = make_inputs(model, BATCH)
    with torch.no_grad():
        outputs = tensors_of(model(*inputs))
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    assert shapes == expected_shapes(model, inputs)
    for key, value in outputs.items():
        assert torch.isfinite(value).all(), f"{name}.{key} has NaN/inf"


@pytest.mark.parametrize("name", PRESETS)
def test_gradients_reach_every_parameter(name: str, make_inputs, tensors_of) -> None:
    torch.manual_seed(0)
    model = MODELS.get(name)().train()
    inputs = make_inputs(model, 2)
    if isinstance(model, FusionModel):
        inputs[1][:] = True  # every modality present, so every projection is used
    loss = sum(t.float().sum() for t in tensors_of(model(*inputs)).values())
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"{name}: no gradient reaches {dead}"


@pytest.mark.parametrize("name", PRESETS)
def test_batch_matches_single(name: str, make_inputs, tensors_of, item_of) -> None:
    torch.manual_seed(0)
    model = MODELS.get(name)().eval()
    inputs = make_inputs(model, BATCH, seed=1)
    with torch.no_grad():
        batched = tensors_of(model(*inputs))
        for i in range(BATCH):
            single = tensors_of(model(*item_of(inputs, i)))
            for key, value in single.items():
                scale = model.config.max_offset_ms if key == "offset_ms" else 1.0
                torch.testing.assert_close(
                    value / scale, batched[key][i : i + 1] / scale, atol=1e-5, rtol=1e-4, msg=f"{name}.{key}[{i}]"
                )


def test_batch_items_differ() -> None:
    """Guards the agreement test: distinct inputs must give distinct outputs."""
    torch.manual_seed(0)
    model = MODELS.get("fast_triage_test")().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 3, 64, 64))
    assert not torch.allclose(out.clip_logit[0], out.clip_logit[1])


def test_default_presets_on_realistic_clip_shapes() -> None:
    """Inputs exactly as a 10-s clip produces them (100 frames, 8 keyframe crops)."""
    torch.manual_seed(0)
    with torch.no_grad():
        triage = MODELS.get("fast_triage")().eval()(torch.rand(1, 100, 3, 128, 128))
        assert triage.clip_logit.shape == (1,) and triage.frame_logits.shape == (1, 100)

        comp = MODELS.get("compression_resilient")().eval()(torch.rand(8, 3, 128, 128))
        assert comp.logit.shape == (8,) and comp.embedding.shape == (8, 64) and comp.recon.shape == (8, 3, 64, 64)

        av = MODELS.get("av_alignment")().eval()
        times = torch.arange(100, dtype=torch.float32).view(1, 100) / 10
        out = av(torch.randn(1, 160_000) * 0.1, torch.randn(1, 100, 20, 2), torch.rand(1, 100, 48, 96), times)
        assert all(t.shape[0] == 1 and torch.isfinite(t).all() for t in out)
        assert out.embedding.shape == (1, 64)


def test_inputs_are_resized_internally() -> None:
    """Crops of any size are accepted: deployments pass them as decoded."""
    torch.manual_seed(0)
    with torch.no_grad():
        comp = MODELS.get("compression_resilient_test")().eval()
        assert comp(torch.rand(2, 3, 97, 131)).logit.shape == (2,)
        triage = MODELS.get("fast_triage_test")().eval()
        assert triage(torch.rand(1, 2, 3, 50, 70)).frame_logits.shape == (1, 2)
