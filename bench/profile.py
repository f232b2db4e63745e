"""Read a Serve profile (`cluster/serve.*.yaml`) once, so the in-process and served runs use the same settings."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployments.common import DEFAULT_WEIGHTS_VERSION

# Model deployments and the weight bundle each one serves.
MODEL_BUNDLES = {
    "FastTriage": "fast_triage",
    "CompressionResilient": "compression_resilient",
    "AVAlignment": "av_alignment",
    "Fusion": "fusion",
}


@dataclass
class Profile:
    """A Serve config file: the dict `serve run` reads, plus lookups the benchmark needs."""

    path: Path
    config: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Profile:
        return cls(Path(path), yaml.safe_load(Path(path).read_text()))

    @property
    def app(self) -> dict[str, Any]:
        return self.config["applications"][0]

    @property
    def app_name(self) -> str:
        return str(self.app["name"])

    @property
    def weights_dir(self) -> str | None:
        return (self.app.get("args") or {}).get("weights_dir")

    def deployment(self, name: str) -> dict[str, Any]:
        for deployment in self.app["deployments"]:
            if deployment["name"] == name:
                return deployment
        raise KeyError(f"{self.path}: no deployment {name!r}")

    def user_config(self, name: str) -> dict[str, Any]:
        """The deployment's `user_config` (a copy; empty when the profile sets none)."""
        try:
            return copy.deepcopy(self.deployment(name).get("user_config") or {})
        except KeyError:
            return {}

    def weight_versions(self) -> dict[str, str]:
        """Bundle name -> the version the profile serves (the default when it names none, as `WeightsConfig` does)."""
        return {
            bundle: self.user_config(name).get("version", DEFAULT_WEIGHTS_VERSION) for name, bundle in MODEL_BUNDLES.items()
        }

    def with_triage(self, overrides: dict[str, float]) -> dict[str, Any]:
        """A copy of the config whose FastTriage `user_config` has `overrides` applied."""
        config = copy.deepcopy(self.config)
        profile = Profile(self.path, config)
        profile.deployment("FastTriage").setdefault("user_config", {}).update(overrides)
        return config
