"""Serve's proxy answers its own errors (a lost Ingress replica, its timeout, no replica) in the API's JSON shape."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments.proxy_errors import ProxyErrorsAsJson, proxy_middlewares


def _run(status: int, content_type: bytes, chunks: list[bytes], request_id: bytes | None = b"rid-1") -> tuple[dict, bytes]:
    async def app(scope, receive, send):
        headers = [(b"content-type", content_type), (b"content-length", str(sum(map(len, chunks))).encode())]
        if request_id:
            headers.append((b"x-request-id", request_id))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(ProxyErrorsAsJson(app)({"type": "http", "headers": []}, receive, send))
    start = sent[0]
    return start, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("status, code", [(500, "internal"), (503, "unavailable"), (408, "timeout"), (404, "not_found")])
def test_plain_text_errors_of_the_proxy_become_the_api_shape(status: int, code: str) -> None:
    start, body = _run(status, b"text/plain; charset=utf-8", [b"Request rid-1 timed out ", b"after 120.0s.\nTraceback /usr/lib/x.py"])
    answer = json.loads(body)
    assert start["status"] == status and set(answer) == {"error", "detail", "request_id"}
    assert answer["error"] == code and answer["request_id"] == "rid-1"
    assert "Traceback" not in answer["detail"] and "/usr/lib" not in answer["detail"]
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(body)


def test_answers_of_the_api_and_successes_pass_untouched() -> None:
    api_error = json.dumps({"error": "unusable_media", "detail": "x", "request_id": "r"}).encode()
    start, body = _run(422, b"application/json", [api_error])
    assert body == api_error and start["status"] == 422
    start, body = _run(200, b"text/html", [b"<html>", b"</html>"])
    assert body == b"<html></html>" and start["status"] == 200


def test_an_error_without_a_request_id_still_gets_one() -> None:
    _, body = _run(500, b"text/plain", [b"Internal Server Error"], request_id=None)
    assert len(json.loads(body)["request_id"]) == 32


def test_the_proxy_callback_returns_starlette_middleware() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(proxy_middlewares())[0].cls is ProxyErrorsAsJson


def test_an_exception_escaping_the_proxy_is_answered_in_json_not_by_uvicorn() -> None:
    async def app(scope, receive, send):
        raise RuntimeError("replica died at /srv/x.py")

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(ProxyErrorsAsJson(app)({"type": "http", "headers": []}, None, send))
    assert sent[0]["status"] == 500 and json.loads(sent[1]["body"])["error"] == "internal"


def test_a_lost_replica_that_serve_answers_with_nothing_gets_a_json_500() -> None:
    """Serve's proxy sends no message at all for a request whose replica died and returns (uvicorn's plain 500 follows)."""
    from ray.serve._private.http_util import send_http_response_on_exception
    from ray.serve._private.proxy_request_response import ResponseStatus

    async def app(scope, receive, send):
        for message in send_http_response_on_exception(ResponseStatus(code=500, is_error=True, message="actor died"), False):
            await send(message)

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(ProxyErrorsAsJson(app)({"type": "http", "headers": [(b"x-request-id", b"r-9")]}, None, send))
    assert sent[0]["status"] == 500 and (b"content-type", b"application/json") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == "internal" and body["request_id"] == "r-9" and "replica was lost" in body["detail"]
