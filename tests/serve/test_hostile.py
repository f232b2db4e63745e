"""A hostile-input campaign against the running service: over 1,000 generated inputs, every one answered.

The corpus is built here from a seeded generator (no files shipped): truncations, bit flips, corrupted
headers, polyglots, random bytes, text, malformed multipart, decode bombs and oversized bodies. What
must hold: every answer is a 200 or one of the API's JSON 4xx (never a 5xx, never a dropped
connection), nothing hangs, a bomb does not block a small image sent beside it, the service is ready
afterwards and the job store holds no half-written upload.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest

from tests.mediagen import (
    encode_audio,
    encode_image,
    encode_video,
    numbered_frames,
    speech_like_audio,
)
from tests.serve.conftest import TEST_MAX_UPLOAD_BYTES

pytestmark = pytest.mark.serve
API_4XX = {400: "bad_request", 413: "too_large", 415: "not_media", 422: "unusable_media"}
ANSWER_WITHIN_S = 60.0  # no request may hang; the proxy's own timeout is 120 s


def _seeds() -> dict[str, bytes]:
    rgb = np.asarray(PIL.Image.new("RGB", (96, 72), (120, 90, 60)))
    audio = speech_like_audio(1.0)
    return {
        "mp4": encode_video(numbered_frames(10, size=(96, 72)), fps=10, audio=audio),
        "webm": encode_video(numbered_frames(10, size=(96, 72)), container="webm", codec="libvpx-vp9", fps=10),
        "png": encode_image(rgb, "png"),
        "jpeg": encode_image(rgb, "jpeg"),
        "wav": encode_audio(audio),
        "mp3": encode_audio(audio, fmt="mp3"),
    }


def _corpus(seed: int = 0) -> list[tuple[str, bytes]]:
    """(kind, upload bytes): 1,000 mutated or junk uploads."""
    rng = np.random.default_rng(seed)
    seeds = _seeds()
    names = sorted(seeds)
    corpus: list[tuple[str, bytes]] = []
    for _ in range(250):  # truncated anywhere
        data = seeds[names[rng.integers(len(names))]]
        corpus.append(("truncated", data[: int(rng.integers(0, len(data)))]))
    for _ in range(300):  # a few bytes flipped
        data = bytearray(seeds[names[rng.integers(len(names))]])
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 40))):
            data[at] ^= 1 << int(rng.integers(8))
        corpus.append(("bit_flipped", bytes(data)))
    for _ in range(120):  # the header replaced by noise
        data = bytearray(seeds[names[rng.integers(len(names))]])
        n = int(rng.integers(4, 64))
        data[:n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        corpus.append(("header_corrupted", bytes(data)))
    magic = [b"ID3\x04\x00", b"GIF89a", b"PK\x03\x04", b"%PDF-1.7\n", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WAVE",
             b"\x1aE\xdf\xa3", b"ftypisom", b"#EXTM3U\n", b"ffconcat version 1.0\nfile /etc/passwd\n"]
    for _ in range(120):  # polyglots: one format's signature in front of another's body, or noise
        head = magic[rng.integers(len(magic))]
        body = seeds[names[rng.integers(len(names))]] if rng.random() < 0.5 else rng.bytes(int(rng.integers(10, 5000)))
        corpus.append(("polyglot", head + body))
    for _ in range(150):  # noise of any length
        corpus.append(("random", rng.bytes(int(rng.integers(1, 20_000)))))
    texts = [b"[" * 4000 + b"]" * 4000, b'{"file": "x"}', b"<html><script>alert(1)</script></html>", b"\x00" * 5000,
             b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.1/x.m3u8\n", b"a" * 10_000]
    for i in range(60):
        corpus.append(("text", texts[i % len(texts)] * int(rng.integers(1, 4))))
    return corpus


def _post(url: str, data: bytes, filename: str = "upload.bin") -> tuple[int | None, dict | str, float]:
    started = time.monotonic()
    try:
        with httpx.Client(base_url=url, timeout=ANSWER_WITHIN_S) as c:
            r = c.post("/v1/analyze", files={"file": (filename, data)})
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}", time.monotonic() - started
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, body, time.monotonic() - started


def _is_api_answer(status: int | None, body) -> bool:
    if status == 200:
        return isinstance(body, dict) and body.get("verdict") in ("fake", "real", "uncertain")
    return status in API_4XX and isinstance(body, dict) and body.get("error") == API_4XX[status] and "Traceback" not in body.get("detail", "")


def test_a_thousand_hostile_uploads_get_json_answers(service) -> None:
    corpus = _corpus()
    assert len(corpus) >= 1000
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda item: (item[0], *_post(service.url, item[1])), corpus))
    by_kind = Counter((kind, status) for kind, status, _, _ in answers)
    print("\nhostile campaign:", dict(sorted(by_kind.items(), key=str)))
    refusals = [s for _, status, _, s in answers if status != 200]
    print(f"refusals: {len(refusals)}, median {statistics.median(refusals):.3f} s, max {max(refusals):.2f} s; "
          f"slowest answer {max(s for *_, s in answers):.2f} s")
    bad = [(kind, status, str(body)[:200]) for kind, status, body, _ in answers if not _is_api_answer(status, body)]
    assert not bad, bad[:20]
    with httpx.Client(base_url=service.url, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
    service.settle(timeout_s=300)  # the load scaled the decoders up: leave the session's service as it was


def test_malformed_requests_get_json_4xx(service) -> None:
    url = service.url
    clip = encode_image(np.zeros((32, 32, 3), np.uint8), "png")
    cases = {
        "no file field": dict(files={"other": ("a.png", clip)}),
        "no body": dict(content=b""),
        "json body": dict(json={"file": "a.png"}),
        "multipart without boundary": dict(content=b"--x\r\n\r\nabc", headers={"Content-Type": "multipart/form-data"}),
        "truncated multipart": dict(
            content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + clip[:50],
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
        "bad pins": dict(files={"file": ("a.png", clip)}, headers={"X-Model-Versions": "=,==,Nope=1"}),
        "empty file": dict(files={"file": ("a.png", b"")}),
    }
    with httpx.Client(base_url=url, timeout=30) as c:
        for name, kwargs in cases.items():
            r = c.post("/v1/analyze", **kwargs)
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            assert set(r.json()) == {"error", "detail", "request_id"}, (name, r.text)
        for method, path in (("GET", "/v1/analyze"), ("DELETE", "/readyz"), ("GET", "/nowhere"), ("GET", "/v1/jobs/../x")):
            r = c.request(method, path)
            assert r.status_code in (404, 405) and set(r.json()) == {"error", "detail", "request_id"}, (method, path, r.text)
        r = c.post("/v1/analyze", files={"file": ("big.bin", b"\0" * (TEST_MAX_UPLOAD_BYTES + 1))})
        assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_a_decode_bomb_is_refused_without_blocking_a_small_image(service, tmp_path: Path) -> None:
    frames = (np.full((16, 16, 3), i % 251, np.uint8) for i in range(45_000))  # over max_decoded_frames (40,000)
    bomb = encode_video(frames, fps=1000.0, keyframe_interval=100_000, encoder_options={"preset": "ultrafast"})
    huge = io.BytesIO()
    PIL.Image.new("1", (16_000, 16_000)).save(huge, format="PNG")
    image = encode_image(np.full((64, 64, 3), 100, np.uint8), "png")
    finished: dict[str, float] = {}
    results: dict[str, tuple] = {}

    def send(name: str, data: bytes) -> None:
        results[name] = _post(service.url, data)
        finished[name] = time.monotonic()

    bomb_thread = threading.Thread(target=send, args=("bomb", bomb))
    bomb_thread.start()
    time.sleep(0.3)
    send("image", image)
    bomb_thread.join()
    send("huge_png", huge.getvalue())
    print(f"\nbomb {results['bomb'][0]} in {results['bomb'][2]:.2f} s; image beside it {results['image'][0]} in "
          f"{results['image'][2]:.2f} s; 16000x16000 PNG {results['huge_png'][0]} in {results['huge_png'][2]:.2f} s")
    assert results["bomb"][0] == 413 and "video frames to decode" in results["bomb"][1]["detail"]
    assert results["image"][0] == 200 and finished["image"] < finished["bomb"]  # answered while the bomb was refused
    assert results["huge_png"][0] == 413 and results["huge_png"][1]["error"] == "too_large"
    jobs_dir = Path(service.deployment_config(service.config, "JobQueue")["user_config"]["jobs_dir"])
    assert not list((jobs_dir / "uploads").glob(".*.part")) if (jobs_dir / "uploads").exists() else True
