"""Media by URL: http(s) only, public addresses only unless allow-listed, redirects re-checked, bodies bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.fetch import FetchError, fetch, parse_networks

BODY = b"\x89PNG" + bytes(5000)
LOCAL = parse_networks(["127.0.0.0/8"])
REDIRECTS = {"/redirect": "/media/clip.png", "/loop": "/loop", "/to-metadata": "http://169.254.169.254/latest/meta-data/"}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/media/clip.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.end_headers()
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif self.path == "/big-streamed":  # no Content-Length: counted as it arrives
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(bytes(100_000))
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _fetch(url: str, **kw):
    return asyncio.run(fetch(url, **{"max_bytes": 1_000_000, "timeout_s": 10, **kw}))


def _refused(url: str, **kw) -> FetchError:
    with pytest.raises(FetchError) as caught:
        _fetch(url, **kw)
    return caught.value


def test_an_allow_listed_local_server_is_fetched_and_redirects_followed(server: str) -> None:
    assert _fetch(f"{server}/media/clip.png", allow=LOCAL) == ("clip.png", BODY)
    assert _fetch(f"{server}/redirect", allow=LOCAL) == ("clip.png", BODY)


def test_local_and_private_addresses_are_refused_by_default(server: str) -> None:
    for url in (f"{server}/media/clip.png", "http://10.1.2.3/x.mp4", "http://[::1]/x.mp4", "http://169.254.169.254/"):
        refused = _refused(url)
        assert refused.status == 400 and "non-public address" in refused.detail, url
    refused = _refused(f"{server}/to-metadata", allow=LOCAL)  # a redirect is checked like the first hop
    assert refused.status == 400 and "169.254.169.254" in refused.detail


def test_only_http_urls_without_credentials(server: str) -> None:
    for url in ("file:///etc/passwd", "ftp://example.org/x.mp4", "gopher://x/", "/relative.mp4",
                "http://user:pw@127.0.0.1/x"):
        assert _refused(url, allow=LOCAL).status == 400, url


def test_bodies_are_bounded_and_redirect_loops_end(server: str) -> None:
    assert _refused(f"{server}/big-declared", allow=LOCAL).status == 413
    assert _refused(f"{server}/big-streamed", allow=LOCAL, max_bytes=1_000_000).status == 413
    loop = _refused(f"{server}/loop", allow=LOCAL)
    assert loop.status == 422 and "redirects" in loop.detail
    assert _refused(f"{server}/missing", allow=LOCAL).status == 422
    assert _refused("http://name.invalid/x.mp4").status == 422  # does not resolve
