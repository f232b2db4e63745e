"""Weights versions inside one replica: atomic swap, canary fraction, per-request pins, failed loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deployments.edge import parse_pins
from deployments.weights import VersionedModel
from pipeline.config import CanaryConfig, WeightsConfig
from pipeline.results import UnknownVersionError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    src = REPO / "weights" / "fast_triage" / "v0"
    for version in ("v0", "v1"):
        shutil.copytree(src, tmp_path / "fast_triage" / version)
    corrupt = tmp_path / "fast_triage" / "v2-corrupt"
    shutil.copytree(src, corrupt)
    blob = bytearray((corrupt / "model.safetensors").read_bytes())
    blob[-1] ^= 0x01
    (corrupt / "model.safetensors").write_bytes(bytes(blob))
    return tmp_path


def _slot(weights: Path, config: WeightsConfig) -> VersionedModel:
    slot = VersionedModel("FastTriage", "fast_triage", str(weights))
    slot.apply(config)
    return slot


def test_canary_takes_its_fraction_of_requests(weights: Path) -> None:
    slot = _slot(weights, WeightsConfig(version="v0", canary=CanaryConfig(version="v1", fraction=0.25)))
    slot._rng.seed(0)
    picks = [slot.choose().version for _ in range(2000)]
    assert 0.2 < picks.count("v1") / len(picks) < 0.3
    assert slot.info().canary == {"version": "fast_triage/v1", "fraction": 0.25}
    assert slot.info(slot.choose("v1")).version == "fast_triage/v1"


def test_pins_choose_a_served_version_and_reject_others(weights: Path) -> None:
    slot = _slot(weights, WeightsConfig(version="v0", canary=CanaryConfig(version="v1", fraction=0.0)))
    assert all(slot.choose().version == "v0" for _ in range(100))  # fraction 0: never the canary unpinned
    assert slot.choose("v1").version == "v1"
    assert slot.choose("fast_triage/v0").version == "v0"
    with pytest.raises(UnknownVersionError, match="serves v0, v1"):
        slot.choose("v9")


def test_failed_versions_never_take_traffic(weights: Path) -> None:
    slot = _slot(weights, WeightsConfig(version="v1"))
    slot.apply(WeightsConfig(version="v2-corrupt", canary=CanaryConfig(version="missing", fraction=1.0)))
    assert slot.bundle.version == "v1"
    assert all(slot.choose().version == "v1" for _ in range(50))
    info = slot.info()
    assert info.version == "fast_triage/v1" and info.requested_version == "v2-corrupt"
    assert "v2-corrupt" in info.error and "canary fast_triage/missing" in info.error and info.canary is None
    slot.apply(WeightsConfig(version="v0"))  # a good version clears the error
    assert slot.bundle.version == "v0" and slot.info().error is None


def test_first_load_failure_raises(weights: Path) -> None:
    with pytest.raises(Exception, match="sha256|checksum"):
        _slot(weights, WeightsConfig(version="v2-corrupt"))


def test_unknown_config_keys_are_rejected() -> None:
    with pytest.raises(ValueError):
        WeightsConfig.model_validate({"version": "v0", "canary": {"version": "v1", "fraction": 1.5}})
    with pytest.raises(ValueError):
        WeightsConfig.model_validate({"versoin": "v0"})


def test_parse_pins() -> None:
    assert parse_pins(None) == {}
    assert parse_pins("FastTriage=v1, Fusion = v0") == {"FastTriage": "v1", "Fusion": "v0"}
    for bad in ("FastTriage", "FastTriage=", "MediaDecoder=v1", "Nope=v1"):
        with pytest.raises(ValueError):
            parse_pins(bad)
