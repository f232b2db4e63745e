"""`pipeline.analyze` over deployment handles: the served graph's orchestration, shared by the ingress and the job worker.

Every stage call goes through Ray's object store, never inline over gRPC: uploads and decoded
clips run to megabytes (a 10 s 720p clip pickles to 7.5 MB; gRPC's message limit is 4 MiB). The
upload is put once; MediaDecoder puts the clip once and answers with its metadata and a
reference, which every branch resolves. Stage responses are handed on unawaited where a later
stage only passes them along (keyframe motion runs beside triage).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import ray
from ray.serve.handle import DeploymentHandle

from deployments.batching import ClipUnavailable
from deployments.metrics import pipeline_metrics
from media.errors import MediaError
from pipeline.analyze import Analysis, Progress, StageCalls, analyze
from pipeline.results import BranchResult, KeyframeResult
from pipeline.table import COMPUTE_DEPLOYMENTS

logger = logging.getLogger("ray.serve")

# A replica or node that died mid-request (or took the decoded clip with it). Every stage is a pure
# function of the upload, so the whole analysis is safely re-run once; user errors (RayTaskError) are not.
LOST_WORK = (
    ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError, ClipUnavailable,
)
# Deployments the orchestration calls: the stage table's, in its (the graph's) order.
STAGE_DEPLOYMENTS = COMPUTE_DEPLOYMENTS


def stage_handles(*handles: DeploymentHandle) -> dict[str, DeploymentHandle]:
    """Deployment name -> handle, from handles given in STAGE_DEPLOYMENTS' order (as `graph.py` binds them)."""
    return dict(zip(STAGE_DEPLOYMENTS, handles, strict=True))


def by_reference(handle: DeploymentHandle) -> DeploymentHandle:
    """`handle` with calls that go through Ray's object store whatever Serve's transport default.

    By reference is Serve's default unless RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (or
    RAY_SERVE_USE_GRPC_BY_DEFAULT=1) is set; then every request failed on gRPC's 4 MiB limit.
    """
    return handle.options(_by_reference=True)


class Orchestrator:
    """The stage handles, as `pipeline.analyze`'s callables."""

    def __init__(self, handles: dict[str, DeploymentHandle]) -> None:
        missing = set(STAGE_DEPLOYMENTS) - set(handles)
        if missing:
            raise ValueError(f"no handle for {sorted(missing)}")
        self.handles = {name: by_reference(handles[name]) for name in STAGE_DEPLOYMENTS}
        h = self.handles

        async def decode(data: bytes) -> Any:
            decoded = await h["MediaDecoder"].decode.remote([ray.put(data)])  # the only copy of the upload
            if isinstance(decoded, MediaError):  # a refused upload comes back as a value, not a replica error
                raise decoded
            return decoded

        def keyframes(clip: Any, frame_scores: np.ndarray, motion: Any) -> Any:
            return h["KeyframeSelector"].remote(clip, frame_scores, motion)

        def visual(clip: Any, kf: KeyframeResult | None, pin: str | None) -> Any:
            return h["CompressionResilient"].remote(clip, kf, pin=pin)

        def fuse(branches: list[BranchResult], pin: str | None) -> Any:
            return h["Fusion"].remote(branches, pin=pin)

        self.calls = StageCalls(
            decode=decode,
            triage=lambda clip, pin: h["FastTriage"].remote(clip, pin=pin),
            keyframes=keyframes,
            visual=visual,
            av=lambda clip, pin: h["AVAlignment"].remote(clip, pin=pin),
            fuse=fuse,
            start_motion=lambda clip: h["KeyframeSelector"].motion.remote(clip),
        )

    async def analyze(
        self, data: bytes, pins: dict[str, str], progress: Progress | None = None, keep_clip: bool = False,
    ) -> Analysis:
        """One analysis, re-run once when a replica or node died under it (see LOST_WORK)."""
        options = {"pins": pins, "progress": progress, "fatal": LOST_WORK, "keep_clip": keep_clip}
        try:
            analysis = await analyze(data, self.calls, **options)
        except LOST_WORK as exc:
            pipeline_metrics().errors.inc(tags={"kind": "replica_lost"})
            logger.warning("%s during an analysis; re-running it once", type(exc).__name__)
            analysis = await analyze(data, self.calls, **options)
        if analysis.failures:
            pipeline_metrics().errors.inc(len(analysis.failures), tags={"kind": "branch_failed"})
        return analysis

    async def infos(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Each stage deployment's `ModelInfo`, or the exception asking for it raised."""
        answers = await asyncio.gather(
            *(asyncio.wait_for(h.info.remote(), timeout=timeout_s) for h in self.handles.values()),
            return_exceptions=True,
        )
        return dict(zip(self.handles, answers))
