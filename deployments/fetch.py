"""Media by URL: fetched by the service with streaming size and time limits, never from inside its own network.

Only http and https. Every hop (the URL and each redirect, at most `max_redirects`) is resolved
first, and every address it resolves to must be a public one: loopback, link-local, private,
shared, multicast and reserved ranges are refused unless a configured allow-list of networks
opens them (the tests serve media from 127.0.0.1 that way). The body is streamed and cut at the
byte limit; the whole fetch has one deadline. Errors are `FetchError(status, detail)`: 400 for a
URL that is not allowed, 413 too large, 422 for a fetch that failed or timed out.

Known gap: the address is checked before httpx connects, and httpx resolves the name again; a
DNS answer that changes between the two (DNS rebinding) is not caught.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def parse_networks(networks: list[str]) -> list[Network]:
    return [ipaddress.ip_network(n, strict=False) for n in networks]


async def _check_host(url: str, allow: list[Network]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(400, f"only http and https URLs are fetched, not {parts.scheme or 'a relative URL'}")
    if not parts.hostname:
        raise FetchError(400, "the URL has no host")
    if parts.username or parts.password:
        raise FetchError(400, "URLs with credentials are not fetched")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError(422, f"cannot resolve {parts.hostname}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if any(address in net for net in allow):
            continue
        if not address.is_global or address.is_multicast:
            raise FetchError(400, f"{parts.hostname} resolves to {address}, a non-public address; not fetched")


async def fetch(url: str, *, max_bytes: int, timeout_s: float = 30.0, max_redirects: int = 3,
                allow: list[Network] | None = None) -> tuple[str, bytes]:
    """(file name from the URL's path, body bytes)."""
    allow = allow or []
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(timeout_s), trust_env=False) as client:
        for _ in range(max_redirects + 1):
            await _check_host(url, allow)
            try:
                async with client.stream("GET", url, headers={"Accept": "video/*, image/*, audio/*, */*"}) as r:
                    if r.is_redirect:
                        url = urljoin(url, r.headers.get("location", ""))
                        continue
                    if r.status_code != 200:
                        raise FetchError(422, f"fetching the URL answered HTTP {r.status_code}")
                    declared = r.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise FetchError(413, f"the URL's body of {declared} bytes exceeds {max_bytes} bytes")
                    chunks, size = [], 0
                    async for chunk in r.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise FetchError(413, f"the URL's body exceeds {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise FetchError(422, f"fetching the URL took more than {timeout_s:g} s")
                        chunks.append(chunk)
                    name = urlsplit(url).path.rsplit("/", 1)[-1] or "download"
                    return name, b"".join(chunks)
            except httpx.TimeoutException:
                raise FetchError(422, f"fetching the URL took more than {timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise FetchError(422, f"fetching the URL failed: {type(exc).__name__}") from None
        raise FetchError(422, f"more than {max_redirects} redirects")
