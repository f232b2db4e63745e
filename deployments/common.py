"""Small pieces every model deployment shares: versioned weights, thread sizing, tensor views.

Kept here so each deployment module stays a thin adapter between Serve and `models`/`media`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger("ray.serve")

BranchStatus = Literal["ok", "skipped", "failed"]


@dataclass
class ModelInfo:
    """Which weights answered a request; the ingress copies this into the response."""

    deployment: str
    version: str | None
    trained: bool | None
    sha256: str | None = None
    requested_version: str | None = None
    error: str | None = None  # last failed reconfigure, while the previous version keeps serving


@dataclass
class BranchResult:
    """One modality's opinion. `features` is what Fusion consumes; `score` is P(fake) alone."""

    modality: str
    status: BranchStatus
    model: ModelInfo
    score: float | None = None
    reason: str | None = None
    features: np.ndarray | None = None  # (D,) float32
    details: dict[str, Any] = field(default_factory=dict)
    timing_ms: float = 0.0


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + math.exp(-float(x))))


def replica_cpu_share(default: float = 1.0) -> float:
    """The CPU share Ray assigned to this replica (fractional), or `default` outside Ray."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", default))
    except Exception:  # outside a Ray worker
        return default


def configure_torch_threads() -> int:
    """Match torch's intra-op threads to the replica's CPU share so replicas don't oversubscribe."""
    import torch

    threads = max(1, math.ceil(replica_cpu_share()))
    torch.set_num_threads(threads)
    return threads


def pick_device() -> str:
    """CUDA when this replica was given a GPU and one is visible, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def images_to_tensor(images: np.ndarray, device: str = "cpu"):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; copies once (object-store arrays are read-only)."""
    import torch

    t = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # (N, H, W, 3)
    return t.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32).div_(255.0)


class VersionedModel:
    """The weights a deployment serves, swapped atomically by `reconfigure`.

    A version that fails to load (checksum, keys, shapes) is recorded in `error` and the
    previous version keeps serving; only the very first load may raise, since a replica
    with no weights cannot answer at all.
    """

    def __init__(self, deployment: str, bundle_name: str, weights_dir: str | None = None) -> None:
        self.deployment = deployment
        self.bundle_name = bundle_name
        self.weights_dir = weights_dir
        self._lock = threading.Lock()
        self._bundle: Any = None
        self._requested: str | None = None
        self._error: str | None = None
        self.device = pick_device()

    def _root(self) -> Path:
        from models.bundle import weights_root

        return Path(self.weights_dir) if self.weights_dir else weights_root()

    def load(self, version: str) -> None:
        from models.bundle import load_bundle

        self._requested = version
        if self._bundle is not None and self._bundle.version == version and self._error is None:
            return
        started = time.perf_counter()
        try:
            bundle = load_bundle(self._root() / self.bundle_name / version, device=self.device)
        except Exception as exc:  # any failure keeps the old weights serving
            self._error = f"{self.bundle_name}/{version}: {type(exc).__name__}: {exc}"
            if self._bundle is None:
                raise
            logger.error("keeping %s/%s after failed load: %s", self.bundle_name, self._bundle.version, self._error)
            return
        with self._lock:
            self._bundle = bundle
            self._error = None
        logger.info(
            "%s serving %s/%s (trained=%s) loaded in %.0f ms",
            self.deployment, self.bundle_name, version, bundle.trained, (time.perf_counter() - started) * 1e3,
        )

    @property
    def model(self):
        return self._bundle.model

    @property
    def bundle(self):
        return self._bundle

    def info(self, bundle: Any = None) -> ModelInfo:
        """Describe `bundle` (the one a request actually used) or, by default, the current one."""
        b = bundle if bundle is not None else self._bundle
        return ModelInfo(
            deployment=self.deployment,
            version=f"{self.bundle_name}/{b.version}" if b else None,
            trained=b.trained if b else None,
            sha256=b.sha256 if b else None,
            requested_version=self._requested,
            error=self._error,
        )


class Timer:
    """`with Timer() as t: ...; t.ms` — per-stage wall time for `timings_ms`."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._start) * 1e3
