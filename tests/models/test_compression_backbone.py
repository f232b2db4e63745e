"""CompressionResilient with a pretrained (torchvision MobileNetV2) RGB stream: strict bundles and strict ImageNet init."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v2

from models import MODELS, load_bundle, save_bundle
from models.bundle import WeightsError
from models.compression import (
    MOBILENET_TEST_CONFIG,
    PretrainedRGBStream,
    build_compression_resilient,
    init_rgb_backbone,
)

REPO = Path(__file__).resolve().parents[2]
WIDTH = MOBILENET_TEST_CONFIG.rgb_width_mult


def test_backbone_config_round_trips_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MODELS.get("compression_resilient_mobilenet_test")().eval()
    assert isinstance(model.rgb_stream, PretrainedRGBStream)
    save_bundle(model, tmp_path / "b", arch="compression_resilient", config=model.config, trained=False, card_text="t")
    loaded = load_bundle(tmp_path / "b")
    assert loaded.config == model.config and loaded.config.rgb_backbone == "mobilenet_v2"
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x).logit, model(x).logit, atol=1e-6)


def test_conv_stack_bundle_does_not_load_into_backbone_config(tmp_path: Path) -> None:
    model = MODELS.get("compression_resilient_test")()
    save_bundle(model, tmp_path / "b", arch="compression_resilient", config=model.config, trained=False, card_text="t")
    config_file = tmp_path / "b" / "config.json"
    config_file.write_text(config_file.read_text().replace('"rgb_backbone": null', '"rgb_backbone": "mobilenet_v2"'))
    with pytest.raises(WeightsError):  # the checksum, then the keys, refuse it
        load_bundle(tmp_path / "b")


def test_init_rgb_backbone_loads_torchvision_state_dict_strictly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = mobilenet_v2(weights=None, width_mult=WIDTH)
    path = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), path)
    model = MODELS.get("compression_resilient_mobilenet_test")()
    sha = init_rgb_backbone(model, path)
    assert len(sha) == 64
    for key, value in reference.features.state_dict().items():
        assert torch.equal(model.rgb_stream.features.state_dict()[key], value), key


def test_init_rgb_backbone_takes_the_first_blocks_when_truncated(tmp_path: Path) -> None:
    reference = mobilenet_v2(weights=None, width_mult=WIDTH)
    path = tmp_path / "mobilenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_compression_resilient(replace(MOBILENET_TEST_CONFIG, rgb_backbone_depth=5))
    init_rgb_backbone(model, path)
    assert len(model.rgb_stream.features) == 5
    assert torch.equal(model.rgb_stream.features[4].conv[0][0].weight, reference.features[4].conv[0][0].weight)


def test_init_rgb_backbone_rejects_wrong_state_dicts(tmp_path: Path) -> None:
    model = MODELS.get("compression_resilient_mobilenet_test")()
    state = mobilenet_v2(weights=None, width_mult=WIDTH).state_dict()
    missing = dict(state)
    missing.pop("classifier.1.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a mobilenet_v2"):
        init_rgb_backbone(model, tmp_path / "missing.pth")
    torch.save(mobilenet_v2(weights=None, width_mult=0.5).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(ValueError, match="not a mobilenet_v2"):
        init_rgb_backbone(model, tmp_path / "wider.pth")
    with pytest.raises(TypeError, match="no pretrained RGB backbone"):
        init_rgb_backbone(MODELS.get("compression_resilient_test")(), tmp_path / "wider.pth")


def test_unknown_backbone_is_an_error() -> None:
    with pytest.raises(ValueError, match="known: mobilenet_v2"):
        build_compression_resilient(replace(MOBILENET_TEST_CONFIG, rgb_backbone="resnet9000"))


def test_v1_bundle_still_loads_strictly() -> None:
    bundle = load_bundle(REPO / "weights" / "compression_resilient" / "v1")
    assert bundle.config.rgb_backbone is None and bundle.trained
    assert not isinstance(bundle.model.rgb_stream, PretrainedRGBStream)
