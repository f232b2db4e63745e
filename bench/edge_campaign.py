"""`python -m bench.edge_campaign [URL [KEY]]`: the edge's speed and memory targets on a running local service:
replicas' RSS around the hostile corpus, then (status, seconds) of bombs and a small PNG beside them (drops raise).
Behaviour (401, 429, 413 before the body, JSON errors) is asserted by tests/serve/test_edge.py and test_hostile.py.
"""

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil

from bench.memory import deployment_of
from bench.served import local_url
from tests.mediagen import decode_bomb, encode_image, hostile_corpus, huge_png


def rss_mib(deployment: str) -> int:
    replicas = [p for p in psutil.process_iter(["cmdline", "memory_info"]) if deployment_of(p.info["cmdline"] or []) == deployment]
    return round(sum(p.info["memory_info"].rss for p in replicas) / 2**20)


def main(url: str = "http://127.0.0.1:8000", key: str | None = None) -> None:
    url, auth = local_url(url), {"Authorization": f"Bearer {key}"} if key else {}

    def post(data: bytes) -> tuple[int, float]:
        started = time.monotonic()
        status = httpx.post(f"{url}/v1/analyze", files={"file": ("u", data)}, headers=auth, timeout=130).status_code
        return status, round(time.monotonic() - started, 2)

    small = encode_image(np.full((64, 64, 3), 100, np.uint8), "png")
    with ThreadPoolExecutor(4) as pool:
        for seed in (1, 2):  # the first round from a fresh start includes the models' lazy loading
            before = rss_mib("Ingress"), rss_mib("MediaDecoder")
            answers = list(pool.map(lambda item: post(item[1]), hostile_corpus(seed)))
            print(f"hostile corpus seed {seed}: {Counter(a[0] for a in answers)}, slowest {max(a[1] for a in answers)} s; "
                  f"RSS MiB ingress {before[0]} -> {rss_mib('Ingress')}, decoders {before[1]} -> {rss_mib('MediaDecoder')}")
        for name, data in (("60,000-frame single-GOP bomb", decode_bomb(60_000)), ("16000² PNG", huge_png())):
            refused, _ = pool.submit(post, data), time.sleep(0.2)
            print(f"{name}: {post(small)} for a small PNG sent 0.2 s after it; itself {refused.result()}")


if __name__ == "__main__":
    main(*sys.argv[1:])
