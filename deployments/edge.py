"""The HTTP edge: the FastAPI app, request parsing, and one JSON error shape for every status.

Every error the service answers — its own (not media, too large, unusable), FastAPI's request
validation, an unknown route (404), a wrong method (405) — is an `ErrorResponse`
`{"error", "detail", "request_id"}`, through the app's exception handlers.

`BodyLimit` bounds a request body before anything buffers it: a declared `Content-Length` over
the limit is answered 413 without reading a byte, a streamed body is counted as it arrives and
cut at the limit, and a body still arriving after its deadline is answered 408. Serve's proxy
forwards the body only as the app reads it, so a refused body is never held anywhere.
"""

import asyncio
import re
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.metrics import pipeline_metrics
from pipeline.schemas import ErrorResponse
from pipeline.table import PINNABLE

ERROR_NAMES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "not_media",
    422: "unusable_media", 500: "internal", 503: "unavailable", 504: "timeout", 401: "unauthorized",
    403: "forbidden", 408: "body_timeout", 409: "conflict", 429: "too_many_requests", 507: "storage_full",
}
PIN_HEADER = "X-Model-Versions"
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 403, 408, 413, 415, 422, 429, 500, 503, 504)}

api = FastAPI(
    title="SpectraShield",
    version="1",
    description="Multimodal deepfake detection: post a video, image or audio file, get a calibrated verdict "
    "with per-modality evidence, keyframes and suspicious time ranges.",
)


class ServiceError(Exception):
    """An answer other than 2xx, raised anywhere below a route and rendered by the app's handler."""

    def __init__(self, status: int, detail: str, request_id: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.request_id, self.headers = status, detail, request_id, headers


def error_response(status: int, detail: str, request_id: str | None = None, headers: dict[str, str] | None = None):
    body = ErrorResponse(error=ERROR_NAMES.get(status, "internal"), detail=detail, request_id=request_id)
    pipeline_metrics().errors.inc(tags={"kind": body.error})
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


@api.exception_handler(ServiceError)
async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.detail, exc.request_id, exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
    )
    return error_response(400, f"invalid request: {problems}")


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


def pins_header(
    model_versions: str | None = Header(
        None, alias=PIN_HEADER,
        description="pin weights per request for A/B checks, e.g. `FastTriage=v1, Fusion=v0`; "
        "each must be a version the deployment serves (primary or canary), else 400",
    ),
) -> dict[str, str]:
    """FastAPI dependency: the request's pins, or a 400."""
    try:
        return parse_pins(model_versions)
    except ValueError as exc:
        raise ServiceError(400, str(exc)) from None


def sanitize_filename(name: str | None, max_chars: int = 120) -> str | None:
    """The client's file name as it may be echoed: its last path component, printable word characters,
    dots, dashes, spaces and brackets only (anything else becomes `_`), at most `max_chars` long."""
    if name is None:
        return None
    base = re.split(r"[\\/]", name)[-1]
    clean = re.sub(r"[^\w.\- ()\[\]]", "_", base, flags=re.ASCII).strip(" .")
    return clean[:max_chars] or "upload"


MULTIPART_SLACK_BYTES = 1024 * 1024  # a request body may exceed its file's limit by this much framing


@dataclass
class BodyLimits:
    """What `BodyLimit` enforces; the ingress sets it from its user_config (one per replica process)."""

    max_bytes: int = 200 * 1024 * 1024 + 1024 * 1024
    timeout_s: float = 30.0  # the whole body, plus 1 s per MiB it declares
    seconds_per_mib: float = 1.0


BODY_LIMITS = BodyLimits()


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: request bodies bounded in bytes and time before any handler buffers them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limits = BODY_LIMITS
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, send, 400, "invalid Content-Length")
                    return
        if declared is not None and declared > limits.max_bytes:
            await self._refuse(scope, send, 413, f"request body of {declared} bytes exceeds {limits.max_bytes} bytes")
            return
        allowed_s = limits.timeout_s + limits.seconds_per_mib * (declared or 0) / 2**20
        deadline = time.monotonic() + allowed_s
        received = 0
        tripped: list[tuple[int, str]] = []

        async def bounded_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                tripped.append((408, f"the request body did not arrive within {allowed_s:.0f} s"))
                raise _BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limits.max_bytes:
                    tripped.append((413, f"request body exceeds {limits.max_bytes} bytes"))
                    raise _BodyTooLarge
            return message

        started_response = False

        async def guarded_send(message) -> None:
            nonlocal started_response
            if tripped:  # the handler answered a body we cut (e.g. its parser's 400): ours replaces it
                return
            started_response = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except (_BodyTooLarge, _BodyTimeout):
            pass
        if tripped and not started_response:
            status, detail = tripped[0]
            await self._refuse(scope, send, status, detail)

    @staticmethod
    async def _refuse(scope, send, status: int, detail: str) -> None:
        response = error_response(status, detail, uuid.uuid4().hex, {"Connection": "close"})
        await response(scope, _no_body, send)


async def _no_body():
    return {"type": "http.disconnect"}


api.add_middleware(BodyLimit)
