"""`python -m bench.edge_campaign --key K --burst-key B`: the secure-edge targets, measured on a running service.

Start the service with keys first (a copy of cluster/serve.cpu.yaml whose Gatekeeper has `keys_db`;
K: a key with the analyze scope and large quotas, B: a key allowed 5 requests per minute). Then it
prints: the answer without a key, a burst over B's quota, a 210 MiB upload actually sent (time to
the answer, bytes the client pushed, ingress RSS), two decode bombs each with a small image sent
beside it, and two rounds of the hostile corpus of `tests/serve/test_hostile.py` (status counts,
non-JSON errors, slowest answer) with the ingress and decoder RSS around each round: the first
round from cold (models load lazily), the second warm. Asserts nothing; prints numbers.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import PIL.Image
import psutil

from tests.mediagen import encode_image, encode_video
from tests.serve.test_hostile import _corpus


def rss_mib(role: str) -> float:
    """Summed RSS of this app's replicas of one deployment."""
    total = 0.0
    for p in psutil.process_iter(["cmdline"]):
        if f"ServeReplica:spectrashield:{role}" in " ".join(p.info["cmdline"] or []):
            total += p.memory_info().rss / 2**20
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--burst-key", required=True)
    args = parser.parse_args(argv)
    auth = {"Authorization": f"Bearer {args.key}"}

    def post(data: bytes, headers: dict | None = auth) -> tuple[int | None, object, float]:
        started = time.monotonic()
        try:
            r = httpx.post(f"{args.url}/v1/analyze", files={"file": ("u.bin", data)}, headers=headers, timeout=130)
        except httpx.HTTPError as exc:
            return None, str(exc), time.monotonic() - started
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return r.status_code, body, time.monotonic() - started

    print("without a key:", post(b"x", headers={})[:2])
    burst = [httpx.get(f"{args.url}/v1/models", headers={"Authorization": f"Bearer {args.burst_key}"}).status_code
             for _ in range(8)]
    print("8 requests on a 5/min key:", burst)

    pushed = 0

    def body():
        nonlocal pushed
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for _ in range(210):
            pushed += 2**20
            yield b"\0" * 2**20
        yield b"\r\n--b--\r\n"

    before, started = rss_mib("Ingress"), time.monotonic()
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(210 * 2**20 + 100)}
    try:
        r = httpx.post(f"{args.url}/v1/analyze", content=body(), headers=headers, timeout=60)
        answer = f"{r.status_code} {r.json().get('error')}"
    except httpx.HTTPError as exc:
        answer = type(exc).__name__
    print(f"210 MiB upload: {answer} in {time.monotonic() - started:.2f} s, the client had pushed {pushed / 2**20:.0f} MiB; "
          f"ingress RSS {before:.0f} -> {rss_mib('Ingress'):.0f} MiB")

    frames = (np.full((16, 16, 3), i % 251, np.uint8) for i in range(60_000))
    bomb = encode_video(frames, fps=1000.0, keyframe_interval=10**6, encoder_options={"preset": "ultrafast"})
    png = io.BytesIO()
    PIL.Image.new("1", (16_000, 16_000)).save(png, format="PNG")
    image = encode_image(np.full((64, 64, 3), 100, np.uint8), "png")
    warm = post(image)  # the image path's first call loads lazily; time the bombs' neighbours warm
    print(f"a 64x64 PNG alone: {warm[0]} in {warm[2]:.2f} s (first call)")
    for name, data in (("1000 fps single-GOP bomb (60,000 16x16 frames)", bomb), ("16000x16000 PNG", png.getvalue())):
        result: dict[str, tuple] = {}
        thread = threading.Thread(target=lambda d=data, into=result: into.setdefault("bomb", post(d)))
        thread.start()
        time.sleep(0.2)
        result["image"] = post(image)
        thread.join()
        print(f"{name}: {result['bomb'][0]} in {result['bomb'][2]:.2f} s; a 64x64 PNG sent beside it: "
              f"{result['image'][0]} in {result['image'][2]:.2f} s")

    for round_no, seed in ((1, 1), (2, 2)):
        ingress, decoder, started = rss_mib("Ingress"), rss_mib("MediaDecoder"), time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda item: (item[0], *post(item[1])), _corpus(seed)))
        time.sleep(5)
        statuses = Counter(a[1] for a in answers)
        non_json = sum(1 for a in answers if a[1] != 200 and not isinstance(a[2], dict))
        print(f"hostile corpus round {round_no} ({len(answers)} uploads, 4 at a time, {time.monotonic() - started:.0f} s): "
              f"{dict(statuses)}; non-JSON errors {non_json}; slowest {max(a[3] for a in answers):.1f} s; RSS MiB "
              f"ingress {ingress:.0f} -> {rss_mib('Ingress'):.0f}, decoders {decoder:.0f} -> {rss_mib('MediaDecoder'):.0f}")
    print("readyz:", httpx.get(f"{args.url}/readyz", timeout=30).status_code)


if __name__ == "__main__":
    main()
