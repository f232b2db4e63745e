"""Versioned weight bundles: `weights/<model_name>/<version>/` that load strictly and loudly.

A bundle carries everything needed to rebuild its model without the code that trained it:

- `model.safetensors`: the state dict (no pickle);
- `config.json`: {"arch", "config" (the config dataclass as a dict), "trained", "created", ...};
- `card.md`: what the weights are, how they were made and how well they score;
- `manifest.json`: {filename: sha256} for the three files above.

Loading checks every checksum before reading anything, rebuilds the model from its config
through ARCHITECTURES, and compares keys and shapes itself so one error lists every missing,
unexpected or mis-shaped tensor (rather than the first one torch trips over).

State-dict convention: fitted buffers (BatchNorm statistics, the fusion temperature) are
persistent and shipped; constants of a method (the SRM filter bank) are non-persistent and
come from the code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.ood import OODStats
from models.registry import ARCHITECTURES, config_from_dict

WEIGHTS_ENV = "SPECTRASHIELD_WEIGHTS_DIR"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "card.md"
MANIFEST_FILE = "manifest.json"
OOD_FILE = "ood.safetensors"  # optional: `models.ood.OODStats` of the model's embedding, fitted after training
CHANNEL_OOD_FILE = "channel_ood.safetensors"  # optional: `models.ood.OODStats` of `models.channel.channel_profile`
# optional, av_alignment with a speech expert: the same two tests for the expert's own training speech
EXPERT_OOD_FILE = "expert_ood.safetensors"
EXPERT_CHANNEL_OOD_FILE = "expert_channel_ood.safetensors"
STATS_FILES = (OOD_FILE, CHANNEL_OOD_FILE, EXPERT_OOD_FILE, EXPERT_CHANNEL_OOD_FILE)
CHECKED_FILES = (MODEL_FILE, CONFIG_FILE, CARD_FILE)
FORMAT_VERSION = 1

# Deployment -> bundle name; the compression bundle holds its DAE as the `dae.` submodule.
BUNDLE_NAMES = ("fast_triage", "compression_resilient", "av_alignment", "fusion")


class WeightsError(Exception):
    """A bundle is missing, corrupt or does not fit its architecture; the old weights stay live."""


@dataclass(frozen=True)
class LoadedBundle:
    model: nn.Module  # in eval mode, on the requested device
    arch: str
    config: Any  # the architecture's config dataclass
    trained: bool
    version: str  # the bundle directory's name, e.g. "v0"
    sha256: str  # of model.safetensors
    name: str  # the model directory's name, e.g. "fast_triage"
    path: Path
    ood: OODStats | None = None  # authentic-data statistics of the model's embedding, when fitted
    channel_ood: OODStats | None = None  # statistics of its training speech's recording channels, when fitted
    expert_ood: OODStats | None = None  # the speech expert's embedding statistics (av_alignment v5 on)
    expert_channel_ood: OODStats | None = None  # the recording channels of the speech expert's training speech


def weights_root() -> Path:
    """`$SPECTRASHIELD_WEIGHTS_DIR` if set, else the repository's `weights/`."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "weights"


def bundle_dir(model_name: str, version: str, root: Path | None = None) -> Path:
    return (root if root is not None else weights_root()) / model_name / version


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def list_versions(model_name: str, root: Path | None = None) -> list[str]:
    """Versions of `model_name` that have a manifest, oldest first (v2 before v10)."""
    directory = (root if root is not None else weights_root()) / model_name
    if not directory.is_dir():
        return []
    found = [p.name for p in directory.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=_natural_key)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(
    model: nn.Module,
    directory: str | Path,
    *,
    arch: str,
    config: Any,
    trained: bool,
    card_text: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the four bundle files into `directory` (created; existing bundle files are replaced).

    `extra` adds JSON-serialisable keys to config.json (data set, metrics, command line).
    """
    arch_cls, _ = ARCHITECTURES.get(arch)
    if not isinstance(config, arch_cls):
        raise TypeError(f"arch {arch!r} needs a {arch_cls.__name__}, got {type(config).__name__}")
    if getattr(config, "pretrained_dir", None) is not None:
        raise ValueError("a bundle config must not point at a local directory; save model.portable_config() instead")
    reserved = {"arch", "config", "trained", "created", "format_version", "parameters"}
    clash = sorted(reserved & set(extra or {}))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE), metadata={"arch": arch})  # one key: byte-reproducible
    meta: dict[str, Any] = {
        "arch": arch,
        "config": asdict(config) if is_dataclass(config) else config,
        "trained": bool(trained),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "format_version": FORMAT_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        **dict(extra or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    (directory / CARD_FILE).write_text(card_text if card_text.endswith("\n") else card_text + "\n")
    manifest = {name: sha256_file(directory / name) for name in CHECKED_FILES}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def update_card(directory: str | Path, card_text: str) -> Path:
    """Replace a bundle's card.md and its checksum, after verifying the bundle as it stands.

    Evaluation results arrive after training wrote the bundle; the weights and config stay
    byte-for-byte what they were (a bundle that no longer matches its manifest is refused).
    """
    directory = Path(directory)
    manifest = verify_manifest(directory)
    (directory / CARD_FILE).write_text(card_text if card_text.endswith("\n") else card_text + "\n")
    manifest[CARD_FILE] = sha256_file(directory / CARD_FILE)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def attach_ood(directory: str | Path, stats: OODStats, file: str = OOD_FILE) -> Path:
    """Add (or replace) a bundle's out-of-distribution statistics (one of `STATS_FILES`).

    Verifies the bundle as it stands first. Like the card, they arrive after training; the weights and
    config stay byte-for-byte what they were.
    """
    if file not in STATS_FILES:
        raise ValueError(f"statistics go in one of {', '.join(STATS_FILES)}, not {file!r}")
    directory = Path(directory)
    verify_manifest(directory)
    save_file({k: v.contiguous() for k, v in stats.to_tensors().items()}, str(directory / file))
    return add_to_manifest(directory, file)


def add_to_manifest(directory: str | Path, name: str) -> Path:
    """List (or re-list) `name`, just written beside a bundle verified before writing it, with its checksum."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest[name] = sha256_file(directory / name)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def verify_manifest(directory: Path) -> dict[str, str]:
    """Check every file the manifest names (and that it names the required ones)."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise WeightsError(f"{manifest_path}: manifest missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise WeightsError(f"{manifest_path}: manifest must map filename -> sha256")
    unlisted = [name for name in CHECKED_FILES if name not in manifest]
    if unlisted:
        raise WeightsError(f"{manifest_path}: no checksum for {unlisted}")
    for name, expected in manifest.items():
        path = directory / name
        if Path(name).name != name:
            raise WeightsError(f"{manifest_path}: entry {name!r} is not a plain file name")
        if not path.is_file():
            raise WeightsError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise WeightsError(f"{path}: sha256 mismatch: manifest says {expected}, file has {actual}")
    return manifest


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"shape mismatches: {misshaped}")
    if problems:
        raise WeightsError("state dict does not fit the model; " + "; ".join(problems))


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> LoadedBundle:
    """Verify, rebuild and strictly load a bundle; any problem is a WeightsError."""
    directory = Path(directory)
    manifest = verify_manifest(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        arch = meta["arch"]
        config_cls, build = ARCHITECTURES.get(arch)
        config = config_from_dict(config_cls, meta["config"])
        trained = meta["trained"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{directory / CONFIG_FILE}: {exc}") from exc
    if not isinstance(trained, bool):
        raise WeightsError(f"{directory / CONFIG_FILE}: 'trained' must be true or false")
    try:
        model = build(config)
    except Exception as exc:  # e.g. an embedded Wav2Vec2 config this transformers cannot build
        raise WeightsError(f"{directory}: cannot build {arch!r} from its config: {exc}") from exc
    try:
        state = load_file(str(directory / MODEL_FILE), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{directory / MODEL_FILE}: unreadable: {exc}") from exc
    try:
        check_state_dict(model, state)
    except WeightsError as exc:
        raise WeightsError(f"{directory}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # anything the key/shape check above did not anticipate
        raise WeightsError(f"{directory}: {exc}") from exc
    model.to(device).eval()
    ood, channel_ood, expert_ood, expert_channel_ood = (_load_stats(directory, manifest, name) for name in STATS_FILES)
    return LoadedBundle(
        model=model,
        arch=arch,
        config=config,
        trained=trained,
        version=directory.name,
        sha256=manifest[MODEL_FILE],
        name=directory.parent.name,
        path=directory,
        ood=ood,
        channel_ood=channel_ood,
        expert_ood=expert_ood,
        expert_channel_ood=expert_channel_ood,
    )


def _load_stats(directory: Path, manifest: dict[str, str], name: str) -> OODStats | None:
    """Optional statistics the manifest lists (and verify_manifest has checksummed with the rest)."""
    if name not in manifest:
        return None
    try:
        return OODStats.from_tensors(load_file(str(directory / name), device="cpu"))
    except Exception as exc:
        raise WeightsError(f"{directory / name}: {exc}") from exc


def load_version(
    model_name: str, version: str, *, root: Path | None = None, device: str | torch.device = "cpu"
) -> LoadedBundle:
    """What a deployment's `reconfigure()` calls: `weights_root()/<model_name>/<version>`."""
    path = bundle_dir(model_name, version, root)
    if not path.is_dir():
        known = list_versions(model_name, root) or "none"
        raise WeightsError(f"{path}: no such bundle; versions of {model_name!r}: {known}")
    return load_bundle(path, device=device)
