"""Registry semantics and config round-trips through JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from models import ARCHITECTURES, MODELS, Registry
from models.registry import config_from_dict


def test_register_decorator_get_and_names() -> None:
    reg: Registry = Registry("thing")

    @reg.register("b")
    def make_b() -> str:
        return "b"

    reg.register("a", lambda: "a")
    assert reg.get("b") is make_b and reg.get("a")() == "a"
    assert reg.names() == ["a", "b"] and "a" in reg and len(reg) == 2


def test_duplicate_name_is_an_error() -> None:
    reg: Registry = Registry("thing")
    reg.register("x", object())
    with pytest.raises(ValueError, match="'x' is already registered"):
        reg.register("x", object())
    with pytest.raises(ValueError):
        reg.register("x")(lambda: None)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as info:
        MODELS.get("fast_triag")
    message = str(info.value)
    assert "fast_triag" in message
    for name in ("fast_triage", "compression_resilient", "av_alignment", "fusion"):
        assert name in message


def test_presets_build_registered_architectures() -> None:
    arch_configs = {ARCHITECTURES.get(a).config_cls for a in ARCHITECTURES.names()}
    for name in MODELS.names():
        model = MODELS.get(name)()
        assert type(model.config) in arch_configs, name


@pytest.mark.parametrize("name", MODELS.names())
def test_config_survives_json(name: str) -> None:
    config = MODELS.get(name)().config
    restored = config_from_dict(type(config), json.loads(json.dumps(asdict(config))))
    assert restored == config


def test_config_from_dict_rejects_unknown_fields() -> None:
    config = MODELS.get("fusion_test")().config
    data = asdict(config) | {"mystery": 1}
    with pytest.raises(ValueError, match="mystery"):
        config_from_dict(type(config), data)
