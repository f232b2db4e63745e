"""HTTP ingress: upload -> object store once -> decoder -> triage -> branches -> fusion -> verdict JSON.

The DAG's wiring (which handle is which) is fixed in `graph.py`; this module only awaits
handles in the order DESIGN.md draws, and turns typed media errors into 4xx answers.
"""

import asyncio
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import ray
from fastapi import FastAPI, File, Header, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import AVResult, BranchResult, FusionResult, ModelInfo, TriageResult, UnknownVersionError
from deployments.jobs import Claim, UnknownJobError
from deployments.keyframes import KeyframeResult
from deployments.metrics import pipeline_metrics
from deployments.schemas import (
    AnalyzeResponse,
    Artifacts,
    AudioMismatch,
    DeploymentState,
    ErrorResponse,
    HealthResponse,
    HotspotOut,
    JobAccepted,
    JobStatus,
    KeyframeOut,
    MediaInfo,
    ModalityReport,
    ModelsResponse,
    ModelVersion,
    ReadyResponse,
    VisualAnomalies,
)
from media import Clip
from media.errors import MediaError, NotMediaError, UnusableMediaError

logger = logging.getLogger("ray.serve")

ERROR_NAMES = {
    400: "bad_request", 413: "too_large", 415: "not_media", 422: "unusable_media", 500: "internal", 503: "unavailable",
}
PINNABLE = ("FastTriage", "CompressionResilient", "AVAlignment", "Fusion")
PIN_HEADER = "X-Model-Versions"
MEDIA_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 500, 503)}
JOB_POLL_S = 1.0  # how often an idle ingress replica asks the JobQueue for work
# A replica or node that died mid-request (or took the decoded clip with it). Every stage is a pure
# function of the upload, so the whole analysis is safely re-run once; user errors (RayTaskError) are not.
LOST_WORK = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.NodeDiedError)
RETRY_AFTER_S = 15
Progress = Callable[[str], Awaitable[None]]

api = FastAPI(
    title="SpectraShield",
    version="1",
    description="Multimodal deepfake detection: post a video, image or audio file, get a calibrated verdict "
    "with per-modality evidence, keyframes and suspicious time ranges.",
)


class IngressConfig(BaseModel):
    """user_config of the ingress."""

    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    mismatch_threshold: float = Field(0.5, gt=0.0, lt=1.0)  # branch score above which an artifact is "detected"


def _error(status: int, detail: str, request_id: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ERROR_NAMES.get(status, "internal"), detail=detail, request_id=request_id)
    pipeline_metrics().errors.inc(tags={"kind": body.error})
    return JSONResponse(status_code=status, content=body.model_dump())


def _version(info: ModelInfo) -> ModelVersion:
    return ModelVersion(
        version=info.version, trained=info.trained, sha256=info.sha256,
        requested_version=info.requested_version, error=info.error, placement=info.placement, canary=info.canary,
    )


def parse_pins(header: str | None) -> dict[str, str]:
    """`FastTriage=v1, Fusion=v0` -> {deployment: version}; ValueError names what is wrong."""
    pins: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (header or "").split(","))):
        name, sep, version = (x.strip() for x in part.partition("="))
        if not sep or not name or not version:
            raise ValueError(f"{PIN_HEADER}: expected Deployment=version, got {part!r}")
        if name not in PINNABLE:
            raise ValueError(f"{PIN_HEADER}: {name!r} has no versions; pinnable: {', '.join(PINNABLE)}")
        pins[name] = version
    return pins


def _report(branch: BranchResult | None, missing_reason: str) -> ModalityReport:
    if branch is None:
        return ModalityReport(status="skipped", reason=missing_reason)
    return ModalityReport(status=branch.status, score=branch.score, reason=branch.reason, details=branch.details)


# Serve's deployment statuses that still serve: autoscaling in either direction keeps the running
# replicas answering (on a full machine an upscale can stay pending for as long as the load lasts),
# and so does an update (a `serve deploy` of new weights or settings: the running replicas answer
# until they are reconfigured or replaced; tests/serve/test_rollout.py saw 503s here under load).
SERVING_STATUSES = frozenset({"HEALTHY", "UPSCALING", "DOWNSCALING", "UPDATING"})
# Replica states that answer requests: RUNNING, and UPDATING, a running replica whose new
# user_config is being applied in place (it keeps its weights until the new ones load).
SERVING_REPLICA_STATES = ("RUNNING", "UPDATING")


def deployment_ready(state: DeploymentState, needs_model: bool) -> bool:
    """Ready: a serving status, a replica that answers, and weights loaded where it has any."""
    return (
        state.status in SERVING_STATUSES
        and sum(state.replicas.get(s, 0) for s in SERVING_REPLICA_STATES) > 0
        and (not needs_model or state.model is not None)
    )


def by_reference(handle: DeploymentHandle) -> DeploymentHandle:
    """`handle` with calls that go through Ray's object store whatever Serve's transport default."""
    return handle.options(_by_reference=True)


async def _timed(timings: dict[str, float], stage: str, call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    try:
        return await call
    finally:
        timings[stage] = round((time.perf_counter() - started) * 1e3, 2)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class SpectraShieldIngress:
    def __init__(
        self,
        decoder: DeploymentHandle,
        triage: DeploymentHandle,
        keyframes: DeploymentHandle,
        compression: DeploymentHandle,
        av: DeploymentHandle,
        fusion: DeploymentHandle,
        jobs: DeploymentHandle,
    ) -> None:
        # Every call passes its arguments and result through Ray's object store, never inline over gRPC:
        # uploads and decoded clips run to megabytes (a 10 s 720p clip pickles to 7.5 MB; gRPC's message
        # limit is 4 MiB), and one clip goes to four deployments by reference. By reference is Serve's
        # default unless RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (or RAY_SERVE_USE_GRPC_BY_DEFAULT=1) is set.
        decoder, triage, keyframes, compression, av, fusion, jobs = (
            by_reference(h) for h in (decoder, triage, keyframes, compression, av, fusion, jobs)
        )
        self.decoder, self.triage, self.keyframes = decoder, triage, keyframes
        self.compression, self.av, self.fusion = compression, av, fusion
        self.handles = {
            "MediaDecoder": decoder, "FastTriage": triage, "KeyframeSelector": keyframes,
            "CompressionResilient": compression, "AVAlignment": av, "Fusion": fusion,
        }
        self.jobs = jobs
        self.config = IngressConfig()
        self._decoder_info: ModelInfo | None = None
        self._worker_id = uuid.uuid4().hex
        self._worker: asyncio.Task | None = None

    def reconfigure(self, user_config: dict) -> None:
        self.config = IngressConfig.model_validate(user_config or {})

    async def check_health(self) -> None:
        """Serve calls this every few seconds: keep this replica's job worker alive."""
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work_jobs())

    # ---- probes -------------------------------------------------------------------------
    @api.get("/healthz", response_model=HealthResponse, summary="The ingress process answers")
    async def healthz(self) -> HealthResponse:
        return HealthResponse(status="ok")

    async def _deployment_states(self, everything: bool = False) -> tuple[str, dict[str, DeploymentState]]:
        """Serve's view of each deployment plus, for model deployments, the weights they serve.

        `everything` adds the deployments without weights (Ingress, JobQueue) for readiness.
        """
        app_name = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)  # the controller call blocks; keep it off the loop
        app = status.applications.get(app_name)
        infos = await asyncio.gather(
            *(asyncio.wait_for(h.info.remote(), timeout=10) for h in self.handles.values()), return_exceptions=True
        )
        models = {name: info for name, info in zip(self.handles, infos)}
        names = list(self.handles) + sorted(set(app.deployments) - set(self.handles) if app and everything else [])
        states: dict[str, DeploymentState] = {}
        for name in names:
            d = app.deployments.get(name) if app else None
            info = models.get(name)
            states[name] = DeploymentState(
                status=str(d.status.value) if d else "UNKNOWN",
                replicas={str(getattr(k, "value", k)): int(v) for k, v in d.replica_states.items()} if d else {},
                model=_version(info) if isinstance(info, ModelInfo) else None,
            )
        return app_name, states

    @api.get(
        "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
        summary="Every deployment is healthy and has weights loaded",
    )
    async def readyz(self):
        _, states = await self._deployment_states(everything=True)
        ready = all(deployment_ready(s, needs_model=name in self.handles) for name, s in states.items())
        body = ReadyResponse(ready=ready, deployments=states)
        return body if ready else JSONResponse(status_code=503, content=body.model_dump())

    @api.get("/v1/models", response_model=ModelsResponse, summary="Deployments, weights versions, replica counts")
    async def models(self) -> ModelsResponse:
        app_name, states = await self._deployment_states()
        return ModelsResponse(application=app_name, deployments=states)

    # ---- analysis -----------------------------------------------------------------------
    @api.post(
        "/v1/analyze", response_model=AnalyzeResponse, responses=MEDIA_ERRORS,
        summary="Analyse one video, image or audio file (kind recognised from its content)",
    )
    async def analyze(
        self,
        file: UploadFile = File(..., description="the media file"),
        model_versions: str | None = Header(
            None, alias=PIN_HEADER,
            description="pin weights per request for A/B checks, e.g. `FastTriage=v1, Fusion=v0`; "
            "each must be a version the deployment serves (primary or canary), else 400",
        ),
    ):
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            pins = parse_pins(model_versions)
        except ValueError as exc:
            return _error(400, str(exc), request_id)
        data = await file.read(self.config.max_upload_bytes + 1)
        if len(data) > self.config.max_upload_bytes:
            return _error(413, f"upload exceeds {self.config.max_upload_bytes} bytes", request_id)
        if not data:
            return _error(415, "empty upload: no bytes to analyse", request_id)
        try:
            response = await self._analyze_retrying(data, file.filename, request_id, started, pins)
        except MediaError as exc:
            cause = getattr(exc, "cause", exc)  # Serve wraps replica errors; the cause keeps the message
            return _error(exc.http_status, str(cause), request_id)
        except UnknownVersionError as exc:
            return _error(400, str(getattr(exc, "cause", exc)), request_id)
        except LOST_WORK as exc:
            logger.error("request %s: lost twice to dead replicas: %s", request_id, exc)
            response = _error(503, f"a replica was lost twice while analysing ({type(exc).__name__}); retry", request_id)
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        except Exception as exc:
            logger.exception("request %s failed", request_id)
            return _error(500, f"{type(exc).__name__}: {getattr(exc, 'cause', exc)}", request_id)
        metrics = pipeline_metrics()
        metrics.record_timings(response.timings_ms)
        metrics.verdicts.inc(tags={"verdict": response.verdict, "kind": response.media.kind})
        if response.early_exit:
            metrics.early_exits.inc(tags={"verdict": response.verdict})
        return response

    # ---- asynchronous jobs --------------------------------------------------------------
    @api.post(
        "/v1/jobs", status_code=202, response_model=JobAccepted, responses={413: {"model": ErrorResponse}},
        summary="Queue one or many files for analysis; poll GET /v1/jobs/{id}",
    )
    async def submit_job(self, files: list[UploadFile] = File(..., description="one or more media files")):
        uploads = []
        for f in files:
            data = await f.read(self.config.max_upload_bytes + 1)
            if len(data) > self.config.max_upload_bytes:
                return _error(413, f"{f.filename}: upload exceeds {self.config.max_upload_bytes} bytes")
            uploads.append((f.filename, data))
        job_id = await self.jobs.submit.remote(uploads)
        self._ensure_worker()
        return JobAccepted(id=job_id, status_url=f"/v1/jobs/{job_id}", files=len(uploads))

    @api.get(
        "/v1/jobs/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorResponse}},
        summary="A job's status, stage, percent, and per-file results or errors",
    )
    async def job_status(self, job_id: str) -> JobStatus:
        try:
            return JobStatus.model_validate(await self.jobs.get.remote(job_id))
        except UnknownJobError:
            raise HTTPException(status_code=404, detail=f"no job {job_id} (unknown, or its results expired)")

    async def _work_jobs(self) -> None:
        """Take queued files one at a time; the lease is renewed at each stage and by a heartbeat."""
        while True:
            try:
                claim: Claim | None = await self.jobs.claim.remote(self._worker_id)
            except Exception:
                logger.exception("job queue unreachable; retrying")
                await asyncio.sleep(5 * JOB_POLL_S)
                continue
            if claim is None:
                await asyncio.sleep(JOB_POLL_S)
                continue
            await self._work_one(claim)

    async def _work_one(self, claim: Claim) -> None:
        async def stage(name: str) -> None:
            await self.jobs.progress.remote(claim.job_id, claim.index, self._worker_id, name)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(10)
                await stage(current[0])

        current = ["decoding"]

        async def progress(name: str) -> None:
            current[0] = name
            await stage(name)

        beat = asyncio.get_running_loop().create_task(heartbeat())
        result = error = None
        request_id = uuid.uuid4().hex
        try:
            if not claim.data:
                raise NotMediaError("empty upload: no bytes to analyse")
            response = await self._analyze_retrying(
                claim.data, claim.filename, request_id, time.perf_counter(), {}, progress
            )
            result = response.model_dump(mode="json")
        except MediaError as exc:
            error = {"error": ERROR_NAMES.get(exc.http_status, "bad_request"),
                     "detail": str(getattr(exc, "cause", exc)), "request_id": request_id}
        except Exception as exc:
            logger.exception("job %s file %d failed", claim.job_id, claim.index)
            error = {"error": "internal", "detail": f"{type(exc).__name__}: {getattr(exc, 'cause', exc)}",
                     "request_id": request_id}
        finally:
            beat.cancel()
        await self.jobs.complete.remote(claim.job_id, claim.index, self._worker_id, result, error)

    async def _analyze_retrying(self, *args: Any) -> AnalyzeResponse:
        """`_analyze`, re-run once when a replica or node died under it (see LOST_WORK)."""
        try:
            return await self._analyze(*args)
        except LOST_WORK as exc:
            pipeline_metrics().errors.inc(tags={"kind": "replica_lost"})
            logger.warning("request %s: %s; re-running the analysis once", args[2], type(exc).__name__)
            return await self._analyze(*args)

    async def _analyze(
        self,
        data: bytes,
        filename: str | None,
        request_id: str,
        started: float,
        pins: dict[str, str],
        progress: Progress | None = None,
    ) -> AnalyzeResponse:
        async def stage(name: str) -> None:
            if progress is not None:
                await progress(name)

        timings: dict[str, float] = {}
        upload = [ray.put(data)]  # the only copy of the upload; the decoder reads it by reference
        clip_response = self.decoder.decode.remote(upload)
        # Awaiting gives this process zero-copy views of the arrays (same node); downstream calls
        # receive `clip_response` itself, so every branch reads the one object-store copy.
        clip: Clip = await _timed(timings, "decode", clip_response)
        del upload, data
        meta = clip.meta
        if self._decoder_info is None:  # the landmark model is fixed per install: ask once
            self._decoder_info = await self.decoder.info.remote()

        triage: TriageResult | None = None
        keyframes: KeyframeResult | None = None
        visual: BranchResult | None = None
        av: AVResult | None = None
        fused: FusionResult | None = None
        used: dict[str, ModelInfo] = {"MediaDecoder": self._decoder_info}

        motion_call = None
        if meta.kind == "video":
            await stage("triage")
            if clip.n_frames > 1:
                # Keyframe selection's optical flow needs no triage scores: it runs beside triage,
                # and only the clustering waits for the scores.
                motion_call = self.keyframes.motion.remote(clip_response)
            triage_call = self.triage.remote(clip_response, pin=pins.get("FastTriage"))
            try:
                triage = await _timed(timings, "triage", triage_call)
            except BaseException:
                if motion_call is not None:
                    motion_call.cancel()
                raise
            used["FastTriage"] = triage.branch.model
        early = triage is not None and triage.early_exit is not None
        if early and motion_call is not None:
            motion_call.cancel()  # settled by triage: no keyframes

        if not early:
            calls: dict[str, Awaitable[Any]] = {}
            await stage("keyframes" if meta.kind == "video" else "branches")
            if meta.kind == "video" and clip.n_frames > 0:
                async def keyframes_then_visual() -> tuple[KeyframeResult, BranchResult]:
                    kf_call = self.keyframes.remote(clip_response, triage.frame_scores, motion_call)
                    kf = await _timed(timings, "keyframes", kf_call)
                    await stage("branches")
                    visual_call = self.compression.remote(clip_response, kf, pin=pins.get("CompressionResilient"))
                    vis = await _timed(timings, "visual", visual_call)
                    return kf, vis
                calls["visual"] = keyframes_then_visual()
            elif meta.kind == "image":
                visual_call = self.compression.remote(clip_response, None, pin=pins.get("CompressionResilient"))
                calls["visual"] = _timed(timings, "visual", visual_call)
            if meta.has_audio and meta.kind != "image":
                calls["av"] = _timed(timings, "av", self.av.remote(clip_response, pin=pins.get("AVAlignment")))
            results = dict(zip(calls, await asyncio.gather(*calls.values(), return_exceptions=True)))
            failures: dict[str, str] = {}
            for name, result in results.items():
                if isinstance(result, (UnknownVersionError, *LOST_WORK)):
                    raise result  # a bad pin is the caller's 400; a branch lost with its replica re-runs the analysis
                if isinstance(result, BaseException):
                    logger.exception("request %s: %s branch failed", request_id, name, exc_info=result)
                    pipeline_metrics().errors.inc(tags={"kind": "branch_failed"})
                    failures[name] = f"{type(getattr(result, 'cause', result)).__name__}: {getattr(result, 'cause', result)}"
                elif name == "visual":
                    keyframes, visual = result if isinstance(result, tuple) else (None, result)
                else:
                    av = result
            if keyframes is not None:
                used["KeyframeSelector"] = keyframes.model
            if visual is not None:
                used["CompressionResilient"] = visual.model
            if av is not None:
                used["AVAlignment"] = av.av.model
            branches = [b for b in (
                triage.branch if triage else None, visual, av.av if av else None, av.audio if av else None,
            ) if b is not None]
            if not any(b.status == "ok" for b in branches):
                raise _unusable(failures, branches)
            await stage("fusion")
            fused = await _timed(timings, "fusion", self.fusion.remote(branches, pin=pins.get("Fusion")))
            used["Fusion"] = fused.model
        else:
            failures = {}

        timings["total"] = round((time.perf_counter() - started) * 1e3, 2)
        return self._response(
            request_id, filename, clip, triage, keyframes, visual, av, fused, failures, used, timings,
        )

    def _response(
        self,
        request_id: str,
        filename: str | None,
        clip: Clip,
        triage: TriageResult | None,
        keyframes: KeyframeResult | None,
        visual: BranchResult | None,
        av: AVResult | None,
        fused: FusionResult | None,
        failures: dict[str, str],
        used: dict[str, ModelInfo],
        timings: dict[str, float],
    ) -> AnalyzeResponse:
        meta = clip.meta
        threshold = self.config.mismatch_threshold
        if fused is not None:
            p, verdict, is_fake = fused.probability, fused.verdict, fused.is_fake
        else:  # triage settled the clip
            p = float(triage.branch.score)
            is_fake = triage.early_exit == "fake"
            verdict = "fake" if is_fake else "real"
        early = fused is None
        later = "early exit: triage settled the clip"

        def why_skipped(modality: str) -> str:
            if modality in failures:
                return "failed: " + failures[modality]
            if early:
                return later
            if meta.kind == "image":
                return "image upload: only the visual branch runs"
            if meta.kind == "audio":
                return "audio upload: no video"
            return "no audio" if not meta.has_audio else "did not run"

        modalities = {
            "triage": _report(triage.branch if triage else None, "not a video"),
            "visual": _report(visual, why_skipped("visual")),
            "av": _report(av.av if av else None, why_skipped("av")),
            "audio": _report(av.audio if av else None, why_skipped("av")),
        }
        for name, reason in failures.items():
            if name == "av":
                modalities["av"] = modalities["audio"] = ModalityReport(status="failed", reason=reason)
            else:
                modalities[name] = ModalityReport(status="failed", reason=reason)

        av_ok = av is not None and av.av.status == "ok"
        audio_ok = av is not None and av.audio.status == "ok"
        vis_ok = visual is not None and visual.status == "ok"
        artifacts = Artifacts(
            audio_mismatch=AudioMismatch(
                detected=(av.av.score >= threshold or av.audio.score >= threshold) if av_ok and audio_ok
                else (av.audio.score >= threshold if audio_ok else None),
                score=av.av.score if av_ok else None,
                sync_probability=av.av.details.get("sync_probability") if av_ok else None,
                offset_ms=av.av.details.get("offset_ms") if av_ok else None,
                spoof_probability=av.audio.score if audio_ok else None,
            ),
            visual_anomalies=VisualAnomalies(
                detected=visual.score >= threshold if vis_ok else None,
                score=visual.score if vis_ok else None,
                reconstruction_error=visual.details.get("reconstruction_error") if vis_ok else None,
                frames_analyzed=int(visual.details.get("frames_analyzed", 0)) if vis_ok else 0,
            ),
        )
        gate_weights = fused.gate_weights if fused and fused.gate_weights else {m: 0.0 for m in modalities}
        if early:
            gate_weights = {m: (1.0 if m == "triage" else 0.0) for m in modalities}
        return AnalyzeResponse(
            request_id=request_id,
            filename=filename,
            is_fake=is_fake,
            confidence=p if is_fake else 1.0 - p,
            fake_probability=p,
            verdict=verdict,
            early_exit=early,
            artifacts=artifacts,
            gate_weights=gate_weights,
            modalities=modalities,
            keyframes=[KeyframeOut(t=round(k.t, 3), score=k.score) for k in (keyframes.keyframes if keyframes else [])],
            hotspots=[
                HotspotOut(start=round(h.start, 3), end=round(h.end, 3), score=h.score)
                for h in (keyframes.hotspots if keyframes else [])
            ],
            media=MediaInfo(
                kind=meta.kind, duration_s=meta.duration_s, native_fps=meta.native_fps, width=meta.width,
                height=meta.height, rotation=meta.rotation, has_audio=meta.has_audio,
                face_coverage=meta.face_coverage, frames_analyzed=clip.n_frames,
                variable_frame_rate=meta.variable_frame_rate, container=meta.container,
                video_codec=meta.video_codec, audio_codec=meta.audio_codec, size_bytes=meta.size_bytes,
            ),
            models={name: _version(info) for name, info in used.items()},
            timings_ms=timings,
        )


def _unusable(failures: dict[str, str], branches: list[BranchResult]) -> Exception:
    reasons = [f"{k}: {v}" for k, v in failures.items()] + [f"{b.modality}: {b.reason}" for b in branches]
    if failures:
        return RuntimeError("every branch failed: " + "; ".join(reasons))
    return UnusableMediaError("nothing to analyse: " + "; ".join(reasons) if reasons else "nothing to analyse")
