"""JobWorker: takes queued files from the JobQueue one at a time and analyses them through the same orchestration.

Its loop starts in the replica's (async) constructor and runs for its lifetime; Serve's health
check reports a loop that died (the replica is then replaced), it never starts one. Scale job throughput with this
deployment's replicas, apart from the HTTP ingress.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.batching import resolve
from deployments.edge import ERROR_NAMES
from deployments.jobs import Claim
from deployments.orchestration import Orchestrator, by_reference, stage_handles
from media.clip import face_crops_at
from media.errors import MediaError, NotMediaError
from pipeline.analyze import public_error
from pipeline.config import VerdictConfig
from pipeline.verdict import respond

logger = logging.getLogger("ray.serve")


class JobWorkerConfig(BaseModel):
    """user_config of JobWorker."""

    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(1.0, gt=0, description="how often an idle worker asks the JobQueue for work")
    heartbeat_s: float = Field(10.0, gt=0, description="lease renewal while one file is analysed")
    # The verdict rules of the jobs' answers; keep them equal to the Ingress's (the profiles set neither apart).
    verdict: VerdictConfig = Field(default_factory=VerdictConfig)


@serve.deployment(name="JobWorker", ray_actor_options={"num_cpus": 0.05})
class JobWorkerDeployment:
    async def __init__(
        self,
        decoder: DeploymentHandle,
        triage: DeploymentHandle,
        keyframes: DeploymentHandle,
        compression: DeploymentHandle,
        av: DeploymentHandle,
        fusion: DeploymentHandle,
        jobs: DeploymentHandle,
    ) -> None:
        self.orchestrator = Orchestrator(stage_handles(decoder, triage, keyframes, compression, av, fusion))
        self.jobs = by_reference(jobs)
        self.config = JobWorkerConfig()
        self.worker_id = uuid.uuid4().hex
        # Serve runs an async constructor on the replica's event loop: the loop lives as long as the replica.
        self._loop = asyncio.get_running_loop().create_task(self.work())

    def reconfigure(self, user_config: dict) -> None:
        self.config = JobWorkerConfig.model_validate(user_config or {})

    async def check_health(self) -> None:
        """Report a loop that stopped; Serve then replaces the replica."""
        if self._loop.done():
            raise RuntimeError(f"job loop stopped: {self._loop.exception()!r}")

    async def work(self) -> None:
        while True:
            try:
                claim: Claim | None = await self.jobs.claim.remote(self.worker_id)
            except Exception:
                logger.exception("job queue unreachable; retrying")
                await asyncio.sleep(5 * self.config.poll_s)
                continue
            if claim is None:
                await asyncio.sleep(self.config.poll_s)
                continue
            await self.work_one(claim)

    async def work_one(self, claim: Claim) -> None:
        current = ["decoding"]

        async def report(name: str) -> None:
            current[0] = name
            await self.jobs.progress.remote(claim.job_id, claim.index, self.worker_id, name)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.config.heartbeat_s)
                await report(current[0])

        beat = asyncio.get_running_loop().create_task(heartbeat())
        result = error = analysis = None
        request_id = uuid.uuid4().hex
        try:
            if not claim.data:
                raise NotMediaError("empty upload: no bytes to analyse")
            while True:  # a queued file waits out the decoders' load shedding instead of failing on it
                try:
                    analysis = await self.orchestrator.analyze(claim.data, {}, report, keep_clip=True)
                    break
                except BackPressureError:
                    await asyncio.sleep(self.config.poll_s)
            result = respond(analysis, self.config.verdict, request_id, claim.filename).model_dump(mode="json")
        except MediaError as exc:
            error = {"error": ERROR_NAMES.get(exc.http_status, "bad_request"),
                     "detail": str(getattr(exc, "cause", exc)), "request_id": request_id}
        except Exception as exc:
            logger.exception("job %s file %d failed", claim.job_id, claim.index)
            error = {"error": "internal", "detail": public_error(exc),
                     "request_id": request_id}
        finally:
            beat.cancel()
        images = await self.keyframe_images(claim, result, analysis.clip) if result is not None else ([], [])
        await self.jobs.complete.remote(claim.job_id, claim.index, self.worker_id, result, error, *images)

    async def keyframe_images(
        self, claim: Claim, result: dict, clip: Any,
    ) -> tuple[list[bytes], list[np.ndarray | None]]:
        """The keyframes (an image's one frame) as JPEGs from the decoder, and the face crops the visual branch
        scored at those times (None where no face; what a heat-map explains). What fails is left out; the result stands.
        """
        times = [k["t"] for k in result["keyframes"]] or ([0.0] if result["media"]["kind"] == "image" else [])
        if not times:
            return [], []
        jpegs: list[bytes] = []
        crops: list[np.ndarray | None] = []
        try:
            decoder = self.orchestrator.handles["MediaDecoder"]
            jpegs = await decoder.thumbnails.remote([ray.put(claim.data)], times)
        except Exception:
            logger.warning("job %s file %d: no keyframe thumbnails", claim.job_id, claim.index, exc_info=True)
        try:
            crops = face_crops_at(await resolve(clip), times) if clip is not None else []
        except Exception:
            logger.warning("job %s file %d: no keyframe face crops", claim.job_id, claim.index, exc_info=True)
        return jpegs, crops
