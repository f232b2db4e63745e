"""The HTTP edge: the FastAPI app, request parsing, and one JSON error shape for every status.

Every error the service answers — its own (not media, too large, unusable), FastAPI's request
validation, an unknown route (404), a wrong method (405) — is an `ErrorResponse`
`{"error", "detail", "request_id"}`, through the app's exception handlers.
"""


from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.metrics import pipeline_metrics
from pipeline.schemas import ErrorResponse
from pipeline.table import PINNABLE

ERROR_NAMES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "not_media",
    422: "unusable_media", 500: "internal", 503: "unavailable", 504: "timeout",
}
PIN_HEADER = "X-Model-Versions"
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 500, 503, 504)}

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
