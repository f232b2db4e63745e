"""Weight bundles: round-trip, checksums, strict key/shape checks, version listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import (
    ARCHITECTURES,
    MODELS,
    WeightsError,
    list_versions,
    load_bundle,
    load_version,
    save_bundle,
    weights_root,
)
from models.bundle import MANIFEST_FILE, MODEL_FILE, sha256_file
from models.compression import srm_kernels

TEST_PRESETS = [n for n in MODELS.names() if n.endswith("_test")]


def arch_of(model: torch.nn.Module) -> str:
    return next(a for a in ARCHITECTURES.names() if ARCHITECTURES.get(a).config_cls is type(model.config))


def write(model: torch.nn.Module, directory: Path, trained: bool = False) -> Path:
    return save_bundle(model, directory, arch=arch_of(model), config=model.config, trained=trained, card_text="# card")


def rewrite_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace model.safetensors AND its checksum, so only the key/shape checks can object."""
    save_file(state, str(directory / MODEL_FILE))
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest[MODEL_FILE] = sha256_file(directory / MODEL_FILE)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.fixture
def fusion_bundle(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return write(MODELS.get("fusion_test")(), tmp_path / "fusion" / "v3")


@pytest.mark.parametrize("name", TEST_PRESETS)
def test_round_trip(name: str, tmp_path: Path, make_inputs, tensors_of) -> None:
    torch.manual_seed(0)
    model = MODELS.get(name)().eval()
    directory = write(model, tmp_path / name / "v7", trained=True)
    assert sorted(p.name for p in directory.iterdir()) == [
        "card.md",
        "config.json",
        "manifest.json",
        "model.safetensors",
    ]

    loaded = load_bundle(directory)
    assert loaded.version == "v7" and loaded.name == name and loaded.trained is True
    assert loaded.arch == arch_of(model) and loaded.config == model.config
    assert loaded.sha256 == sha256_file(directory / MODEL_FILE)
    assert loaded.model.training is False
    inputs = make_inputs(model, 2)
    with torch.no_grad():
        expected, got = tensors_of(model(*inputs)), tensors_of(loaded.model(*inputs))
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_config_json_carries_the_config(fusion_bundle: Path) -> None:
    meta = json.loads((fusion_bundle / "config.json").read_text())
    assert meta["arch"] == "fusion" and meta["trained"] is False
    assert meta["config"]["modalities"][0] == ["triage", 4]
    assert meta["created"][:4].isdigit()


def test_temperature_ships_and_srm_does_not(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fusion = MODELS.get("fusion_test")()
    fusion.set_temperature(1.7)
    loaded = load_bundle(write(fusion, tmp_path / "fusion" / "v1")).model
    assert float(loaded.temperature) == pytest.approx(1.7)

    comp = MODELS.get("compression_resilient_test")()
    state = load_file(str(write(comp, tmp_path / "comp" / "v1") / MODEL_FILE))
    assert "srm" not in state and any(k.startswith("dae.") for k in state)
    torch.testing.assert_close(load_bundle(tmp_path / "comp" / "v1").model.srm, srm_kernels(3))


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "card.md"])
def test_checksum_mismatch(fusion_bundle: Path, victim: str) -> None:
    expected = json.loads((fusion_bundle / MANIFEST_FILE).read_text())[victim]
    with (fusion_bundle / victim).open("ab") as f:
        f.write(b" ")
    actual = sha256_file(fusion_bundle / victim)
    with pytest.raises(WeightsError) as info:
        load_bundle(fusion_bundle)
    message = str(info.value)
    assert victim in message and expected in message and actual in message


def test_missing_manifest_or_file(fusion_bundle: Path) -> None:
    (fusion_bundle / "card.md").unlink()
    with pytest.raises(WeightsError, match=r"card\.md"):
        load_bundle(fusion_bundle)
    (fusion_bundle / MANIFEST_FILE).unlink()
    with pytest.raises(WeightsError, match="manifest"):
        load_bundle(fusion_bundle)


def test_manifest_must_cover_required_files(fusion_bundle: Path) -> None:
    manifest = json.loads((fusion_bundle / MANIFEST_FILE).read_text())
    del manifest["config.json"]
    (fusion_bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"config\.json"):
        load_bundle(fusion_bundle)


def test_wrong_shape_names_the_key(fusion_bundle: Path) -> None:
    state = load_file(str(fusion_bundle / MODEL_FILE))
    state["head.1.weight"] = torch.zeros(3, 3)
    rewrite_weights(fusion_bundle, state)
    with pytest.raises(WeightsError, match=r"head\.1\.weight.*\(3, 3\)"):
        load_bundle(fusion_bundle)


def test_missing_key_names_the_key(fusion_bundle: Path) -> None:
    state = load_file(str(fusion_bundle / MODEL_FILE))
    del state["temperature"]
    rewrite_weights(fusion_bundle, state)
    with pytest.raises(WeightsError, match=r"missing keys: \['temperature'\]"):
        load_bundle(fusion_bundle)


def test_unexpected_key_names_the_key(fusion_bundle: Path) -> None:
    state = load_file(str(fusion_bundle / MODEL_FILE))
    state["proj.video.weight"] = torch.zeros(2)
    rewrite_weights(fusion_bundle, state)
    with pytest.raises(WeightsError, match=r"unexpected keys: \['proj\.video\.weight'\]"):
        load_bundle(fusion_bundle)


def test_every_problem_in_one_error(fusion_bundle: Path) -> None:
    state = load_file(str(fusion_bundle / MODEL_FILE))
    del state["query"]
    del state["gate.0.bias"]
    state["extra.a"] = torch.zeros(1)
    state["head.4.bias"] = torch.zeros(2)
    rewrite_weights(fusion_bundle, state)
    with pytest.raises(WeightsError) as info:
        load_bundle(fusion_bundle)
    message = str(info.value)
    for key in ("query", "gate.0.bias", "extra.a", "head.4.bias"):
        assert key in message


def test_unknown_arch_or_config_field(fusion_bundle: Path) -> None:
    meta_path = fusion_bundle / "config.json"
    meta = json.loads(meta_path.read_text())

    def rewrite(data: dict) -> None:
        meta_path.write_text(json.dumps(data))
        manifest = json.loads((fusion_bundle / MANIFEST_FILE).read_text())
        manifest["config.json"] = sha256_file(meta_path)
        (fusion_bundle / MANIFEST_FILE).write_text(json.dumps(manifest))

    rewrite({**meta, "arch": "fusion_v9"})
    with pytest.raises(WeightsError, match="fusion_v9"):
        load_bundle(fusion_bundle)
    rewrite({**meta, "config": {**meta["config"], "depth": 3}})
    with pytest.raises(WeightsError, match="depth"):
        load_bundle(fusion_bundle)
    rewrite({**meta, "config": {**meta["config"], "d_model": 16}})
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_bundle(fusion_bundle)


def test_corrupt_safetensors_with_matching_checksum(fusion_bundle: Path) -> None:
    (fusion_bundle / MODEL_FILE).write_bytes(b"not a safetensors file")
    manifest = json.loads((fusion_bundle / MANIFEST_FILE).read_text())
    manifest[MODEL_FILE] = sha256_file(fusion_bundle / MODEL_FILE)
    (fusion_bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="unreadable"):
        load_bundle(fusion_bundle)


def test_save_checks_config_type(tmp_path: Path) -> None:
    model = MODELS.get("fusion_test")()
    with pytest.raises(TypeError):
        save_bundle(model, tmp_path, arch="fast_triage", config=model.config, trained=False, card_text="")


def test_versions_and_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = MODELS.get("fusion_test")()
    for version in ("v10", "v2", "v1"):
        write(model, tmp_path / "fusion" / version)
    (tmp_path / "fusion" / "scratch").mkdir()  # no manifest: not a version
    monkeypatch.setenv("SPECTRASHIELD_WEIGHTS_DIR", str(tmp_path))
    assert weights_root() == tmp_path
    assert list_versions("fusion") == ["v1", "v2", "v10"]
    assert list_versions("nothing") == []
    assert load_version("fusion", "v2").version == "v2"
    with pytest.raises(WeightsError, match="v10"):
        load_version("fusion", "v3")
    monkeypatch.delenv("SPECTRASHIELD_WEIGHTS_DIR")
    assert weights_root() == Path(__file__).resolve().parents[2] / "weights"
