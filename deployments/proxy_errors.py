"""Serve's HTTP proxy answers in the API's one error shape too.

The proxy answers some requests itself, in plain text: a request whose Ingress replica died
(500), no replica or an overloaded one (503), the proxy's own request timeout (408), a path no
application serves (404). `ProxyErrorsAsJson` wraps the proxy's ASGI app (Serve's proxy callback:
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_errors:proxy_middlewares` in the
environment of the process that starts Ray) and rewrites any error answer that is not JSON into
`{"error", "detail", "request_id"}`; answers from the API itself are JSON already and pass
untouched. Imports nothing heavy: it runs inside every proxy.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from starlette.middleware import Middleware

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "deployments.proxy_errors:proxy_middlewares"

# The proxy's own statuses; 408 here is the proxy's request timeout, not a slow upload body.
PROXY_ERRORS = {
    404: ("not_found", None),
    408: ("timeout", "the request took longer than the proxy's request timeout"),
    499: ("client_closed", "the client disconnected"),
    500: ("internal", "the service failed while answering (a replica was lost); retry"),
    503: ("unavailable", "the service has no replica free to answer; retry shortly"),
}
_PATH = re.compile(r"(?:/[\w.@+-]+){2,}")


def proxy_error_body(status: int, text: bytes, request_id: str | None) -> bytes:
    """The JSON body for a plain-text error of the proxy: a stable code, a one-line detail without paths."""
    code, fixed = PROXY_ERRORS.get(status, ("internal" if status >= 500 else "bad_request", None))
    said = text.decode("utf-8", "replace").strip().splitlines()
    detail = fixed or _PATH.sub("<path>", said[0][:300] if said else "") or f"HTTP {status}"
    return json.dumps({"error": code, "detail": detail, "request_id": request_id or uuid.uuid4().hex}).encode()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k.lower() == name), None)


class ProxyErrorsAsJson:
    """Pure ASGI middleware: a >= 400 answer whose content type is not JSON is rewritten; the rest streams on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def rewrite(message: dict) -> None:
            if message["type"] == "http.response.start":
                held["started"] = True
                headers = list(message.get("headers", []))
                ctype = _header(headers, b"content-type") or b""
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    held["start"], held["body"] = message, bytearray()
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                start = held.pop("start")
                headers = [(k, v) for k, v in start.get("headers", [])
                           if k.lower() not in (b"content-type", b"content-length")]
                request_id = _header(headers, b"x-request-id") or _header(scope.get("headers", []), b"x-request-id")
                body = proxy_error_body(start["status"], bytes(held["body"]), request_id.decode() if request_id else None)
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:  # noqa: BLE001 - escaping the proxy, uvicorn would answer a plain-text 500
            if held.get("started"):
                raise
        # Serve's proxy answers a request whose replica died (an actor error: 500) by sending nothing
        # at all and returning; uvicorn would then write its own plain-text 500. Answer it here.
        if not held.get("started"):
            await rewrite({"type": "http.response.start", "status": 500, "headers": []})
            await rewrite({"type": "http.response.body", "body": b"", "more_body": False})


def proxy_middlewares() -> list[Middleware]:
    """What Serve's proxy callback returns: the middlewares wrapped around every HTTP proxy."""
    return [Middleware(ProxyErrorsAsJson)]
