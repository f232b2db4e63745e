"""The edge of the running service: API keys and quotas, bodies bounded before buffering, one request one file."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from deployments.keys import KeyStore
from tests.mediagen import encode_image, talking_face_video
from tests.serve.conftest import TEST_MAX_UPLOAD_BYTES

pytestmark = pytest.mark.serve
WAIT_S = 120


def _image() -> bytes:
    import numpy as np

    return encode_image(np.full((64, 64, 3), 128, np.uint8), "png")


def _wait_for_status(service, path: str, status: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if httpx.get(f"{service.url}{path}", timeout=15).status_code == status:
            return
        time.sleep(1)
    pytest.fail(f"{path} never answered {status}")


def _raw(service, head: str, body: bytes = b"", wait_s: float = 20.0) -> tuple[int, bytes, float]:
    """Send `head` (and `body`) on a raw socket; (status, response bytes, seconds to the answer)."""
    url = urlparse(service.url)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=wait_s) as s:
        s.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or (b"}" not in answer.split(b"\r\n\r\n", 1)[1]):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer, time.monotonic() - started


def test_keys_scopes_and_quotas_on_the_running_service(service, tmp_path) -> None:
    db = tmp_path / "keys" / "keys.sqlite"
    store = KeyStore(db)
    analyst = store.create("analyst", ("analyze",), 100, 2**30)
    ops = store.create("ops", ("admin",), 100, 2**30)
    burst = store.create("burst", ("analyze",), 2, 2**30)
    config = service.fresh_config()
    service.deployment_config(config, "Gatekeeper")["user_config"] = {"keys_db": str(db)}
    image = _image()
    try:
        service.deploy(config)
        _wait_for_status(service, "/v1/models", 401)
        with service.client() as c:
            assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
            r = c.post("/v1/analyze", files={"file": ("a.png", image)})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
            assert c.post("/v1/analyze", files={"file": ("a.png", image)},
                          headers={"Authorization": "Bearer ss_not_a_key"}).status_code == 401
            as_analyst = {"Authorization": f"Bearer {analyst}"}
            r = c.post("/v1/analyze", files={"file": ("a.png", image)}, headers=as_analyst)
            assert r.status_code == 200, r.text
            body = r.json()
            assert all(m["details"] == {} for m in body["modalities"].values())
            assert all(m["placement"] == {} for m in body["models"].values())
            r = c.post("/v1/analyze", files={"file": ("a.png", image)},
                       headers={**as_analyst, "X-Model-Versions": "FastTriage=v1"})
            assert r.status_code == 403 and "admin" in r.json()["detail"]
            r = c.post("/v1/jobs", files=[("files", ("a.png", image))], headers=as_analyst)
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            r = c.post("/v1/feedback", json={"request_id": "r", "label": "real"}, headers=as_analyst)
            assert r.status_code == 403 and "feedback" in r.json()["detail"]
            models = c.get("/v1/models", headers={"Authorization": f"Bearer {ops}"}).json()["deployments"]
            assert any(d["model"]["placement"] for d in models.values() if d.get("model"))  # admin sees placement
            statuses = [c.get("/v1/models", headers={"Authorization": f"Bearer {burst}"}) for _ in range(3)]
            assert [s.status_code for s in statuses] == [200, 200, 429]
            assert statuses[2].json()["error"] == "too_many_requests" and int(statuses[2].headers["retry-after"]) >= 1
    finally:
        service.deploy(service.fresh_config())
    _wait_for_status(service, "/v1/models", 200)
    service.settle()


def test_a_declared_oversized_body_is_refused_before_it_is_sent(service) -> None:
    head = (
        "POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {210 * 2**20}\r\n\r\n"
    )
    status, answer, seconds = _raw(service, head)  # not one byte of the 210 MiB is sent
    assert status == 413 and b'"too_large"' in answer and seconds < 5, (answer[:300], seconds)


def test_a_streamed_body_is_cut_at_the_limit(service) -> None:
    sent = 0

    def chunks():
        nonlocal sent
        boundary_head = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n\r\n"
        yield boundary_head
        for _ in range(4 * TEST_MAX_UPLOAD_BYTES // 2**20):
            sent += 2**20
            yield b"\0" * 2**20

    with service.client() as c:
        try:
            r = c.post("/v1/analyze", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pytest.fail("the connection was dropped instead of answered")  # the API answers 413, then closes
    assert r.status_code == 413 and r.json()["error"] == "too_large", r.text


def test_a_slow_body_gets_408_and_one_request_one_file(service) -> None:
    config = service.fresh_config()
    service.deployment_config(config, "Ingress")["user_config"]["body_timeout_s"] = 2.0
    try:
        service.deploy(config)
        deadline, status = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline and status != 408:
            head = (
                "POST /v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 5000\r\n\r\n"
            )
            status, answer, seconds = _raw(service, head, b"--b\r\n")  # then nothing more
        assert status == 408 and b'"body_timeout"' in answer and seconds < 10, (answer[:300], seconds)
    finally:
        service.deploy(service.fresh_config())
    service.settle()
    clip = talking_face_video(seconds=1.0, size=(160, 120), with_audio=False, seed=3)
    with service.client() as c:
        r = c.post("/v1/analyze", files=[("file", ("a.mp4", clip)), ("file", ("b.mp4", clip))])
        assert r.status_code == 400 and "more than one `file`" in r.json()["detail"]
        r = c.post("/v1/analyze", files={"file": ("a.mp4", clip)},
                   headers=[("X-Model-Versions", "FastTriage=v1"), ("X-Model-Versions", "Fusion=v1")])
        assert r.status_code == 400 and "more than once" in r.json()["detail"]
        r = c.post("/v1/analyze", files={"file": ("../../etc/<script>alert(1)</script>\x00.png", _image())})
        assert r.status_code == 200, r.text
        name = r.json()["filename"]
        assert "/" not in name and "<" not in name and "\x00" not in name and name.endswith(".png")


def test_an_overloaded_decoder_sheds_load_with_json_503(service) -> None:
    """Past MediaDecoder's max_queued_requests the ingress answers 503 + Retry-After at once, not after a queue."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from tests.mediagen import encode_video

    frames = (np.full((16, 16, 3), i % 251, np.uint8) for i in range(30_000))  # ~0.5-1 s of decoding each
    slow = encode_video(frames, fps=1000.0, keyframe_interval=100_000, encoder_options={"preset": "ultrafast"})
    config = service.fresh_config()
    decoder = service.deployment_config(config, "MediaDecoder")
    decoder["max_queued_requests"] = 1
    try:
        service.deploy(config)
        service.settle()

        def post(_):
            started = time.monotonic()
            with service.client() as c:
                r = c.post("/v1/analyze", files={"file": ("slow.mp4", slow)})
            return r, time.monotonic() - started

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
    finally:
        service.deploy(service.fresh_config())
    service.settle()
    shed = [(r, s) for r, s in answers if r.status_code == 503]
    print(f"\n12 at once with max_queued_requests 1: {[r.status_code for r, _ in answers]}; "
          f"503s answered in {[round(s, 2) for _, s in shed]} s")
    assert shed, [r.status_code for r, _ in answers]
    assert all(r.json()["error"] == "unavailable" and "capacity" in r.json()["detail"] and r.headers["retry-after"]
               for r, _ in shed)
    assert all(r.status_code in (200, 503) for r, _ in answers), [r.text[:200] for r, _ in answers]


def test_media_by_url_is_fetched_only_from_allowed_networks(service, tmp_path) -> None:
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np

    from tests.mediagen import encode_image

    (tmp_path / "photo.png").write_bytes(encode_image(np.full((64, 64, 3), 120, np.uint8), "png"))
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/photo.png"
    try:
        with service.client() as c:  # the default: loopback and private addresses are never fetched
            r = c.post("/v1/analyze", data={"url": url})
            assert r.status_code == 400 and "non-public address" in r.json()["detail"], r.text
            r = c.post("/v1/analyze", json={"url": "file:///etc/passwd"})
            assert r.status_code == 400 and "only http and https" in r.json()["detail"], r.text
        config = service.fresh_config()
        service.deployment_config(config, "Ingress")["user_config"]["url_allow_networks"] = ["127.0.0.0/8"]
        service.deploy(config)
        deadline, r = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline:
            with service.client() as c:
                r = c.post("/v1/analyze", data={"url": url})
            if r.status_code == 200:
                break
            time.sleep(2)
        assert r.status_code == 200, r.text
        assert r.json()["filename"] == "photo.png" and r.json()["media"]["kind"] == "image"
        with service.client() as c:
            r = c.post("/v1/analyze", json={"url": url})
            assert r.status_code == 200, r.text
            r = c.post("/v1/analyze", data={"url": url}, files={"file": ("a.png", b"x")})
            assert r.status_code == 400 and "exactly one" in r.json()["detail"]
            accepted = c.post("/v1/jobs", data={"urls": [url, url]})
            assert accepted.status_code == 202 and accepted.json()["files"] == 2, accepted.text
    finally:
        httpd.shutdown()
        service.deploy(service.fresh_config())
    service.settle()
