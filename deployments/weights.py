"""The weights a model replica serves: versions loaded, verified and swapped atomically, and where it runs."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from deployments.placement import replica_placement
from pipeline.config import WeightsConfig
from pipeline.results import ModelInfo, UnknownVersionError
from pipeline.tensors import pick_device

logger = logging.getLogger("ray.serve")


class VersionedModel:
    """The weights a deployment serves (a primary and optionally a canary), swapped atomically.

    A version that fails to load (checksum, keys, shapes) is recorded in `error` and never takes
    traffic: the previous primary (or canary) keeps serving. Only the very first primary load may
    raise, since a replica with no weights cannot answer at all.
    """

    def __init__(self, deployment: str, bundle_name: str, weights_dir: str | None = None) -> None:
        self.deployment = deployment
        self.bundle_name = bundle_name
        self.weights_dir = weights_dir
        self._bundle: Any = None
        self._canary: Any = None
        self._canary_fraction = 0.0
        self._requested: str | None = None
        self._error: str | None = None
        self._rng = random.Random()
        self.device = pick_device()
        self._metrics = None  # WeightsMetrics once inside a Ray worker

    def _weights_metrics(self):
        import ray

        if self._metrics is None and ray.is_initialized():
            from deployments.metrics import WeightsMetrics

            self._metrics = WeightsMetrics()
        return self._metrics

    def _root(self) -> Path:
        from models.bundle import weights_root

        return Path(self.weights_dir) if self.weights_dir else weights_root()

    def _load(self, version: str, current: Any) -> Any:
        """The bundle for `version`: `current` when it already is that version, else a fresh load."""
        from models.bundle import load_bundle

        if current is not None and current.version == version:
            return current
        started = time.perf_counter()
        bundle = load_bundle(self._root() / self.bundle_name / version, device=self.device)
        logger.info(
            "%s loaded %s/%s (trained=%s) in %.0f ms",
            self.deployment, self.bundle_name, version, bundle.trained, (time.perf_counter() - started) * 1e3,
        )
        return bundle

    def apply(self, config: WeightsConfig) -> None:
        """Load what `config` names; each failure is reported and leaves that slot as it was."""
        self._requested = config.version
        errors = []
        try:
            self._bundle = self._load(config.version, self._bundle)
        except Exception as exc:
            if self._bundle is None:
                raise
            errors.append(f"{self.bundle_name}/{config.version}: {type(exc).__name__}: {exc}")
        if config.canary is None or config.canary.version == self._bundle.version:
            self._canary, self._canary_fraction = None, 0.0
        else:
            try:
                self._canary = self._load(config.canary.version, self._canary)
                self._canary_fraction = config.canary.fraction
            except Exception as exc:
                errors.append(f"canary {self.bundle_name}/{config.canary.version}: {type(exc).__name__}: {exc}")
        self._error = "; ".join(errors) or None
        if (m := self._weights_metrics()) is not None:
            m.serving(self._bundle.version, self._canary.version if self._canary is not None else None)
        if self._error:
            logger.error("%s keeps serving %s after failed load: %s", self.deployment, self.served(), self._error)

    def served(self) -> list[str]:
        return [b.version for b in (self._bundle, self._canary) if b is not None]

    def choose(self, pin: str | None = None) -> Any:
        """The bundle for one request: the pinned version, else the canary for its fraction, else primary."""
        primary, canary = self._bundle, self._canary
        if pin is not None:
            names = {pin, pin.removeprefix(f"{self.bundle_name}/")}
            matches = [b for b in (primary, canary) if b is not None and b.version in names]
            if not matches:
                raise UnknownVersionError(
                    f"{self.deployment} does not serve version {pin!r}; it serves {', '.join(self.served())}"
                )
            chosen = matches[0]
        elif canary is not None and self._rng.random() < self._canary_fraction:
            chosen = canary
        else:
            chosen = primary
        if self._metrics is not None:
            self._metrics.answered(chosen.version)
        return chosen

    @property
    def bundle(self):
        return self._bundle

    def info(self, bundle: Any = None) -> ModelInfo:
        """Describe `bundle` (the one a request actually used) or, by default, the primary."""
        b = bundle if bundle is not None else self._bundle
        return ModelInfo(
            deployment=self.deployment,
            version=f"{self.bundle_name}/{b.version}" if b else None,
            trained=b.trained if b else None,
            sha256=b.sha256 if b else None,
            requested_version=self._requested,
            error=self._error,
            placement=replica_placement(),
            canary={"version": f"{self.bundle_name}/{self._canary.version}", "fraction": self._canary_fraction}
            if self._canary is not None else None,
        )
