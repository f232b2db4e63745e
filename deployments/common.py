"""Small pieces every model deployment shares: versioned weights, thread sizing, tensor views.

Kept here so each deployment module stays a thin adapter between Serve and `models`/`media`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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
    placement: dict[str, Any] = field(default_factory=dict)  # replica id, node id, GPU ids of the answering replica
    canary: dict[str, Any] | None = None  # {"version", "fraction"} while a canary is configured


def replica_placement() -> dict[str, Any]:
    """Which replica, node and GPUs this process is: lets operators and tests see packing and rollouts."""
    return dict(_placement())


@functools.cache
def _placement() -> tuple[tuple[str, Any], ...]:
    import ray
    from ray import serve

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray
        return ()
    try:
        ctx = ray.get_runtime_context()
        return (
            ("replica_id", serve.get_replica_context().replica_id.unique_id),
            ("node_id", ctx.get_node_id()),
            ("gpu_ids", [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]),
        )
    except Exception:  # outside a Serve replica (in-process use, tests)
        return ()


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


# Results the model deployments return, defined here so that the ingress can read them without
# importing torch (a replica that only routes stays ~400 MB smaller).


@dataclass
class TriageResult:
    branch: BranchResult
    frame_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (T,) P(fake) per frame
    early_exit: str | None = None  # "real" | "fake" when the clip is settled here


@dataclass
class AVResult:
    av: BranchResult  # synchrony of lips and speech
    audio: BranchResult  # audio spoofing, from the audio alone


@dataclass
class FusionResult:
    probability: float  # calibrated P(fake)
    verdict: str  # "fake" | "real" | "uncertain"
    is_fake: bool
    model: ModelInfo
    gate_weights: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    timing_ms: float = 0.0


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + math.exp(-float(x))))


def replica_cpu_share(default: float = 1.0) -> float:
    """The CPU share Ray assigned to this replica (fractional), or `default` outside Ray."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray
        return default
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", default))


def configure_torch_threads() -> int:
    """Match torch's intra-op threads to the replica's CPU share so replicas don't oversubscribe."""
    import torch

    threads = max(1, math.ceil(replica_cpu_share()))
    torch.set_num_threads(threads)
    return threads


def configure_opencv_threads() -> int:
    """OpenCV's thread pool sized like torch's: the replica's CPU share, rounded up.

    OpenCV otherwise starts one worker per core, and its workers wait actively: keyframe selection
    (DIS flow on 160 px frames, `video_720p`, in-process, 10 calls) took the same wall time with two
    threads as with one (24.6-26.9 vs 24.4-24.9 ms) for twice the CPU (46-51 vs 24-25 ms).
    """
    import cv2

    threads = max(1, math.ceil(replica_cpu_share()))
    cv2.setNumThreads(threads)
    return threads


# glibc mallopt parameters (malloc.h) and the values `keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 * 1024 * 1024  # blocks this large or larger are mapped and unmapped per use
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024  # free memory an arena keeps at its top before returning it


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next request instead of returning it at once.

    Left to itself, glibc maps every block over a dynamic threshold (128 KiB at first, at most
    32 MiB) afresh and hands an arena's free top back to the OS once it exceeds twice that. A
    replica computes on worker threads (`asyncio.to_thread`), and each request then faulted its
    working memory in again: in the FastTriage replica on `video_720p` (ad hoc, 10 calls through a
    handle) 8,300 minor page faults and 45 ms of CPU per call, the forward pass 41-47 ms; after
    this call 2 faults, 30 ms of CPU and 25 ms, as on a process's main thread. (MALLOC_ARENA_MAX=1
    did not help: 41 ms.) The cost: up to TRIM_THRESHOLD_BYTES of free memory stays with each
    arena, so only replicas where it paid call it (FastTriage, CompressionResilient; AVAlignment
    took no such faults and its peak PSS grew 678 -> 748 MiB). Returns whether it applied (glibc
    only; elsewhere a no-op).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def pick_device() -> str:
    """CUDA when this replica was given a GPU and one is visible, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def images_to_tensor(images: np.ndarray, device: str = "cpu"):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; copies once (object-store arrays are read-only)."""
    import torch

    t = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # (N, H, W, 3)
    return t.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32).div_(255.0)


class UnknownVersionError(ValueError):
    """A request pinned a weights version this deployment does not serve (HTTP 400)."""


class CanaryConfig(BaseModel):
    """A second version that answers a random `fraction` of requests."""

    model_config = ConfigDict(extra="forbid")

    version: str
    fraction: float = Field(ge=0.0, le=1.0)


# The trained version shipped in weights/ (v0 is the untrained seeded initialisation).
DEFAULT_WEIGHTS_VERSION = "v1"


class WeightsConfig(BaseModel):
    """The weights part of a model deployment's user_config."""

    model_config = ConfigDict(extra="forbid")

    version: str = DEFAULT_WEIGHTS_VERSION
    canary: CanaryConfig | None = None


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


class BatchConfig(BaseModel):
    """The `@serve.batch` part of a model deployment's user_config.

    Requests that wait in a replica at the same time share one forward pass, up to `max_batch_size`
    of them; a batch starts once it is full or `batch_wait_timeout_s` after its first request. The
    default, 1, runs every request alone: on the 2-core CPU profile batching bought nothing
    (bench/changes.md). Keep `max_ongoing_requests` >= `max_batch_size`, or batches never fill.
    """

    max_batch_size: int = Field(1, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=1.0)

    def apply_to(self, handler: Any) -> None:
        """Retune a `@serve.batch` method in place (no replica restart)."""
        handler.set_max_batch_size(self.max_batch_size)
        handler.set_batch_wait_timeout_s(self.batch_wait_timeout_s)


@dataclass
class Failed:
    """Stands in a batch's results for one request that raised, so the others still get answers."""

    error: BaseException


def answer_batch(run_batch: Any, bundles: list[Any], *items: list[Any]) -> list[Any]:
    """Answer a `@serve.batch` batch: one `run_batch(bundle, *columns)` call per weights version in it.

    `bundles[i]` is the version request i was routed to (primary or canary); `items` are the
    request arguments column by column. When a shared call raises, each of its requests is retried
    alone, so one bad input fails only its own request (as a `Failed` in its slot).
    """
    groups: dict[int, list[int]] = {}
    for i, bundle in enumerate(bundles):
        groups.setdefault(id(bundle), []).append(i)
    answers: list[Any] = [None] * len(bundles)
    for members in groups.values():
        bundle = bundles[members[0]]
        try:
            results = run_batch(bundle, *([column[i] for i in members] for column in items))
        except Exception as exc:
            if len(members) == 1:
                results = [Failed(exc)]
            else:
                results = [answer_batch(run_batch, [bundle], *([column[i]] for column in items))[0] for i in members]
        for i, result in zip(members, results, strict=True):
            answers[i] = result
    return answers


def unwrap(result: Any) -> Any:
    """A batch slot's answer, re-raising the request's own error."""
    if isinstance(result, Failed):
        raise result.error
    return result


def in_serve_replica() -> bool:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


async def submit(handler: Any, run_batch: Any, bundle: Any, *args: Any) -> Any:
    """One request's answer through the replica's `@serve.batch` `handler`.

    A deployment class used as a plain class (in-process tools and tests, no Serve replica) has no
    batch queue: the request then runs alone through the same `answer_batch`.
    """
    if in_serve_replica():
        return unwrap(await handler(bundle, *args))
    answers = await asyncio.to_thread(answer_batch, run_batch, [bundle], *([arg] for arg in args))
    return unwrap(answers[0])


class Timer:
    """`with Timer() as t: ...; t.ms` — per-stage wall time for `timings_ms`."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._start) * 1e3
