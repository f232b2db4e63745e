"""The ingress: HTTP routes over the orchestration (`deployments.orchestration`) and the job queue.

Request parsing and the error shape live in `deployments.edge`; the stage order in
`pipeline.analyze`; the verdict in `pipeline.verdict`. Queued jobs are worked by the separate
JobWorker deployment.
"""


import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments import edge
from deployments.edge import (
    ERROR_RESPONSES,
    MULTIPART_SLACK_BYTES,
    PIN_HEADER,
    ServiceError,
    api,
    pins_header,
    sanitize_filename,
)
from deployments.feedback import FeedbackError
from deployments.fetch import FetchError, fetch, parse_networks
from deployments.jobs import UnknownJobError
from deployments.keys import Caller, Refusal
from deployments.metrics import pipeline_metrics
from deployments.orchestration import (
    LOST_WORK,
    Orchestrator,
    by_reference,
    stage_handles,
)
from media.errors import MediaError
from pipeline.analyze import public_error
from pipeline.config import IngressConfig, VerdictConfig, stage_part
from pipeline.results import ModelInfo, UnknownVersionError
from pipeline.schemas import (
    AnalyzeResponse,
    DeploymentState,
    ErrorResponse,
    FeedbackItem,
    FeedbackList,
    FeedbackRequest,
    HealthResponse,
    JobAccepted,
    JobStatus,
    ModelsResponse,
    ReadyResponse,
)
from pipeline.verdict import model_version, respond

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 15
STATUS_REUSE_S = 0.5  # /readyz and /v1/models asked together share one controller call
PAGE = (Path(__file__).parent / "static" / "index.html").read_text()  # the web page: static, no build step
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


async def read_upload(file: UploadFile, limit: int, request_id: str | None = None) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(413, f"{sanitize_filename(file.filename)}: upload exceeds {limit} bytes", request_id)
    return data


def without_internals(response: AnalyzeResponse) -> AnalyzeResponse:
    """The answer for a caller without the admin scope: verdict and evidence, no raw branch features or placement."""
    response = response.model_copy(deep=True)
    for report in response.modalities.values():
        report.details = {}
    for model in response.models.values():
        model.placement = {}
    return response


def hide_placement(states: dict[str, DeploymentState]) -> None:
    """Blank each deployment's replica placement (node and GPU ids): admin-only detail."""
    for state in states.values():
        if state.model is not None:
            state.model.placement = {}


async def one_of_each(request: Request, request_id: str) -> None:
    """400 for two `file` fields or two X-Model-Versions headers: neither is silently dropped."""
    if len(request.headers.getlist(PIN_HEADER)) > 1:
        raise ServiceError(400, f"{PIN_HEADER} given more than once; put every pin in one header", request_id)
    form = await request.form()  # already parsed by FastAPI for `file`: no second read
    if len(form.getlist("url")) > 1:
        raise ServiceError(400, "more than one `url` field: /v1/analyze takes one (queue many with /v1/jobs)", request_id)
    if len(form.getlist("file")) > 1:
        raise ServiceError(400, "more than one `file` field: /v1/analyze takes one file (queue many with /v1/jobs)", request_id)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.1})
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
        gate: DeploymentHandle,
        job_worker: DeploymentHandle | None = None,  # bound here so the application deploys it; never called
    ) -> None:
        self.orchestrator = Orchestrator(stage_handles(decoder, triage, keyframes, compression, av, fusion))
        self.jobs = by_reference(jobs)
        self.gate = by_reference(gate)
        self._status_lock = asyncio.Lock()
        self._status: tuple[float, Any] = (-1.0, None)  # (monotonic time, serve.status()) of the last controller call
        self.reconfigure({})

    def reconfigure(self, user_config: dict) -> None:
        self.config = IngressConfig.model_validate(user_config or {})
        self.verdict: VerdictConfig = stage_part(self.config, VerdictConfig)
        # Through the module: Serve pickles this class by value, so a name imported from `edge` here would be a
        # copy of the limits, not the object the middleware reads (seen: the limit stayed at its default).
        edge.BODY_LIMITS.max_bytes = self.config.max_upload_bytes + MULTIPART_SLACK_BYTES
        edge.BODY_LIMITS.timeout_s = self.config.body_timeout_s

    async def admit(self, request: Request, scope: str, request_id: str | None = None) -> Caller:
        """The Gatekeeper's decision on this request (keys, scopes, quotas), or the ServiceError refusing it."""
        declared = request.headers.get("content-length", "0")
        answer = await self.gate.admit.remote(
            request.headers.get("authorization"), request.client.host if request.client else None, scope,
            int(declared) if declared.isdigit() else 0,
        )
        if isinstance(answer, Refusal):
            headers = {"Retry-After": str(answer.retry_after_s)} if answer.retry_after_s else None
            if answer.status == 401:
                headers = {"WWW-Authenticate": "Bearer"}
            raise ServiceError(answer.status, answer.detail, request_id, headers=headers)
        return answer

    async def fetch_url(self, url: str, request_id: str | None = None) -> tuple[str, bytes]:
        """(sanitized name, bytes) of media at `url`, under the edge's URL rules (deployments.fetch)."""
        try:
            name, data = await fetch(
                url, max_bytes=self.config.max_upload_bytes, timeout_s=self.config.url_timeout_s,
                max_redirects=self.config.url_max_redirects, allow=parse_networks(self.config.url_allow_networks),
            )
        except FetchError as exc:
            raise ServiceError(exc.status, exc.detail, request_id) from None
        return sanitize_filename(name), data

    # ---- the web page -------------------------------------------------------------------
    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The analyst's page: upload, live stages from the job API, verdict, evidence, timeline, keyframes."""
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    # ---- probes -------------------------------------------------------------------------
    @api.get("/healthz", response_model=HealthResponse, summary="The ingress process answers")
    async def healthz(self) -> HealthResponse:
        return HealthResponse(status="ok")

    async def _serve_status(self) -> Any:
        """`serve.status()`, one call at a time, its answer shared for STATUS_REUSE_S.

        Not thread-safe (seen, Ray 2.60): two threads building its ServeInstanceDetails race on cloudpickle's
        pickle-by-value registry and one raises ValueError; concurrent probes answered 500.
        """
        async with self._status_lock:
            if time.monotonic() - self._status[0] > STATUS_REUSE_S:
                status = await asyncio.to_thread(serve.status)  # the controller call blocks; keep it off the loop
                self._status = (time.monotonic(), status)
            return self._status[1]

    async def _deployment_states(self, everything: bool = False) -> tuple[str, dict[str, DeploymentState]]:
        """Serve's view of each deployment plus, for the stage deployments, what they serve.

        `everything` adds the deployments outside the stage table (Ingress, JobQueue, JobWorker) for readiness.
        """
        app_name = serve.get_replica_context().app_name
        status = await self._serve_status()
        app = status.applications.get(app_name)
        models = await self.orchestrator.infos()
        names = list(models) + sorted(set(app.deployments) - set(models) if app and everything else [])
        states: dict[str, DeploymentState] = {}
        for name in names:
            d = app.deployments.get(name) if app else None
            info = models.get(name)
            states[name] = DeploymentState(
                status=str(d.status.value) if d else "UNKNOWN",
                replicas={str(getattr(k, "value", k)): int(v) for k, v in d.replica_states.items()} if d else {},
                model=model_version(info) if isinstance(info, ModelInfo) else None,
            )
        return app_name, states

    @api.get(
        "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
        summary="Every deployment is healthy and has weights loaded",
    )
    async def readyz(self):
        _, states = await self._deployment_states(everything=True)
        stage_names = self.orchestrator.handles
        ready = all(deployment_ready(s, needs_model=name in stage_names) for name, s in states.items())
        hide_placement(states)  # unauthenticated: no placement details
        body = ReadyResponse(ready=ready, deployments=states)
        return body if ready else JSONResponse(status_code=503, content=body.model_dump())

    @api.get("/v1/models", response_model=ModelsResponse, summary="Deployments, weights versions, replica counts")
    async def models(self, request: Request) -> ModelsResponse:
        caller = await self.admit(request, "")
        app_name, states = await self._deployment_states()
        if not caller.may("admin"):
            hide_placement(states)
        return ModelsResponse(application=app_name, deployments=states)

    # ---- analysis -----------------------------------------------------------------------
    @api.post(
        "/v1/analyze", response_model=AnalyzeResponse, responses=ERROR_RESPONSES,
        summary="Analyse one video, image or audio file (kind recognised from its content)",
    )
    async def analyze(
        self,
        request: Request,
        file: UploadFile | None = File(None, description="the media file (or give `url`)"),
        url: str | None = Form(None, description="an http(s) URL the service fetches instead of a file"),
        pins: dict[str, str] = Depends(pins_header),
    ) -> AnalyzeResponse:
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        caller = await self.admit(request, "analyze", request_id)
        if pins and not caller.may("admin"):
            raise ServiceError(403, f"{PIN_HEADER} needs a key with the admin scope", request_id)
        await one_of_each(request, request_id)
        if file is None and url is None and request.headers.get("content-type", "").startswith("application/json"):
            body = await request.json()
            url = body.get("url") if isinstance(body, dict) and isinstance(body.get("url"), str) else None
        if (file is None) == (url is None):
            raise ServiceError(400, "send exactly one of a `file` field or a `url`", request_id)
        if file is not None:
            name, data = sanitize_filename(file.filename), await read_upload(file, self.config.max_upload_bytes, request_id)
        else:
            name, data = await self.fetch_url(url, request_id)
        if not data:
            raise ServiceError(415, "empty upload: no bytes to analyse", request_id)
        try:
            analysis = await asyncio.wait_for(self.orchestrator.analyze(data, pins), self.config.analysis_timeout_s)
        except TimeoutError:
            logger.error("request %s: no analysis after %.0f s", request_id, self.config.analysis_timeout_s)
            raise ServiceError(
                504, f"the analysis did not finish within {self.config.analysis_timeout_s:.0f} s; retry, or queue it "
                "with POST /v1/jobs", request_id, headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except MediaError as exc:
            raise ServiceError(exc.http_status, str(getattr(exc, "cause", exc)), request_id) from None
        except UnknownVersionError as exc:
            raise ServiceError(400, str(getattr(exc, "cause", exc)), request_id) from None
        except BackPressureError:
            raise ServiceError(
                503, "the service is at capacity (too many uploads waiting to be decoded); retry", request_id,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except LOST_WORK as exc:
            logger.error("request %s: lost twice to dead replicas: %s", request_id, exc)
            raise ServiceError(
                503, f"a replica was lost twice while analysing ({type(exc).__name__}); retry", request_id,
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except Exception as exc:
            logger.exception("request %s failed", request_id)
            raise ServiceError(500, public_error(exc), request_id) from None
        analysis.timings_ms["total"] = round((time.perf_counter() - started) * 1e3, 2)
        response = respond(analysis, self.verdict, request_id, name)
        if not caller.may("admin"):
            response = without_internals(response)
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
    async def submit_job(
        self,
        request: Request,
        files: list[UploadFile] | None = File(None, description="one or more media files"),
        urls: list[str] | None = Form(None, description="http(s) URLs the service fetches, beside or instead of files"),
    ) -> JobAccepted:
        await self.admit(request, "jobs")
        files, urls = files or [], urls or []
        if not files and not urls:
            raise ServiceError(400, "send one or more `files` fields and/or `urls`")
        if len(files) + len(urls) > self.config.max_job_files:
            raise ServiceError(413, f"{len(files) + len(urls)} files in one job; the limit is {self.config.max_job_files}")
        uploads = [(sanitize_filename(f.filename), await read_upload(f, self.config.max_upload_bytes)) for f in files]
        uploads += [await self.fetch_url(u) for u in urls]
        job_id = await self.jobs.submit.remote(uploads)
        return JobAccepted(id=job_id, status_url=f"/v1/jobs/{job_id}", files=len(uploads))

    @api.get(
        "/v1/jobs/{job_id}", response_model=JobStatus, responses={404: {"model": ErrorResponse}},
        summary="A job's status, stage, percent, and per-file results or errors",
    )
    async def job_status(self, request: Request, job_id: str) -> JobStatus:
        await self.admit(request, "jobs")
        try:
            return JobStatus.model_validate(await self.jobs.get.remote(job_id))
        except UnknownJobError:
            raise ServiceError(404, f"no job {job_id} (unknown, or its results expired)") from None

    # ---- analysts' feedback ---------------------------------------------------------------
    @api.post(
        "/v1/feedback", status_code=201, response_model=FeedbackItem,
        responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                   507: {"model": ErrorResponse}},
        summary="An analyst's label (real/fake, family, note) on a job's file or an analysed request, kept to learn from",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": FeedbackRequest.model_json_schema()},
            "multipart/form-data": {"schema": {"type": "object", "description": "FeedbackRequest's fields as form "
                                               "fields, and optionally the media as `file` (for a request_id)"}},
        }}},
    )
    async def give_feedback(self, request: Request) -> FeedbackItem:
        """A job's file keeps its upload while the job's results are kept (JobQueue `keep_uploads`); for a
        request_id the media is kept only when re-sent as `file`. See deployments/feedback.py for retention."""
        request_id = uuid.uuid4().hex
        caller = await self.admit(request, "feedback", request_id)
        data = None
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                raw = await request.json()
            else:
                form = await request.form()
                repeated = sorted({k for k in form if len(form.getlist(k)) > 1})
                if repeated:
                    raise ServiceError(400, f"fields given more than once: {', '.join(repeated)}", request_id)
                raw = {k: v for k, v in form.items() if k != "file" and v != ""}
                upload = form.get("file")
                if upload is not None and not isinstance(upload, str):
                    data = await read_upload(upload, self.config.max_upload_bytes, request_id)
                    raw.setdefault("filename", sanitize_filename(upload.filename))
            filename = raw.pop("filename", None) if isinstance(raw, dict) else None
            body = FeedbackRequest.model_validate(raw)
        except ValueError as exc:  # bad JSON, or fields FeedbackRequest refuses (pydantic's error is a ValueError)
            raise ServiceError(400, f"not a feedback item: {str(exc)[:300]}", request_id) from None
        if (body.job_id is None) == (body.request_id is None):
            raise ServiceError(400, "give exactly one of job_id or request_id", request_id)
        if data is not None and body.job_id is not None:
            raise ServiceError(400, "a job's file is kept from the job: attach a file only with a request_id", request_id)
        item = {**body.model_dump(exclude={"file_index"} if body.job_id is None else set()), "key_name": caller.name}
        if body.request_id is not None:
            item["filename"] = sanitize_filename(filename) if isinstance(filename, str) else None
        answer = await self.jobs.give_feedback.remote(item, data)
        if isinstance(answer, FeedbackError):
            raise ServiceError(answer.status, answer.detail, request_id)
        return FeedbackItem.model_validate(answer)

    @api.get("/v1/feedback", response_model=FeedbackList, summary="Analysts' labels, newest first")
    async def list_feedback(self, request: Request, limit: int = 100, offset: int = 0) -> FeedbackList:
        await self.admit(request, "feedback")
        if not 1 <= limit <= 1000 or offset < 0:
            raise ServiceError(400, "limit must be 1..1000 and offset >= 0")
        items, total = await self.jobs.feedback_items.remote(limit, offset)
        return FeedbackList(items=[FeedbackItem.model_validate(i) for i in items], total=total)

    @api.delete("/v1/feedback/{item_id}", status_code=204, response_class=Response,
                responses={404: {"model": ErrorResponse}}, summary="Delete a feedback item (and its media if unshared)")
    async def delete_feedback(self, request: Request, item_id: str) -> Response:
        await self.admit(request, "admin")
        if not await self.jobs.delete_feedback.remote(item_id):
            raise ServiceError(404, f"no feedback item {item_id}")
        return Response(status_code=204)

    @api.get(
        "/v1/jobs/{job_id}/files/{index}/keyframes/{k}.jpg", response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
        summary="A finished file's keyframe k (an image's picture) as a JPEG, kept as long as the job's results",
    )
    async def keyframe(self, request: Request, job_id: str, index: int, k: int) -> Response:
        await self.admit(request, "jobs")
        try:
            jpeg = await self.jobs.thumbnail.remote(job_id, index, k)
        except UnknownJobError:
            raise ServiceError(404, f"no keyframe {k} of file {index} in job {job_id}") from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @api.get(
        "/v1/jobs/{job_id}/files/{index}/keyframes/{k}/heatmap.jpg", response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
        summary="Where the visual model looked on keyframe k's face crop (occlusion heat-map), computed on request",
    )
    async def heatmap(self, request: Request, job_id: str, index: int, k: int) -> Response:
        """Red where blurring the region away lowers the fake score, blue where it raises it (pipeline.explain).
        Computed by the visual model version that scored the file; 409 once that version is no longer served."""
        request_id = uuid.uuid4().hex
        await self.admit(request, "jobs", request_id)
        try:
            crop, version = await self.jobs.face_crop.remote(job_id, index, k)
        except UnknownJobError:
            raise ServiceError(404, f"no face crop at keyframe {k} of file {index} in job {job_id} (no face there, "
                               "or the results expired)", request_id) from None
        try:
            maps, model = await self.orchestrator.handles["CompressionResilient"].explain.remote(crop[None], pin=version)
        except UnknownVersionError as exc:
            raise ServiceError(409, f"the visual model that scored this file is no longer served: {exc}", request_id) from None
        heat = maps[0]
        return Response(heat.jpeg, media_type="image/jpeg", headers={
            "Cache-Control": "private, max-age=3600", "X-Model-Version": model.version or "",
            "X-Heatmap-Peak": f"{heat.peak:.4f}", "X-Heatmap-Trough": f"{heat.trough:.4f}",
        })
