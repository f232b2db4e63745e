"""Load ONE deployment through a DeploymentHandle, so no other deployment of the graph sees traffic.

Runs as its own driver process (`python -m tests.cluster.handle_load`, RAY_ADDRESS and
RAY_AUTH_MODE=token in its environment) because a process's Ray auth mode is fixed when Ray
is first imported. It loads until `--seconds` pass or its stdin is closed (how the test stops
it early), then prints a JSON count of outcomes.
The clip is decoded here with `media.decode_media`, put in the object store once, and every
call passes that one reference, as the ingress does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import Counter

import ray
from ray import serve

from media import decode_media
from tests.mediagen import talking_face_video


async def _load(deployment: str, app: str, seconds: float, concurrency: int) -> dict[str, object]:
    handle = serve.get_deployment_handle(deployment, app_name=app)
    clip = ray.put(decode_media(talking_face_video(seconds=2.0, size=(320, 240))))
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("loading", flush=True)

    async def worker() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                await handle.remote(clip)
                outcomes["ok"] += 1
            except Exception as exc:  # counted and reported: the test decides what is acceptable
                outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(outcomes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", required=True)
    parser.add_argument("--app", default="spectrashield")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    ray.init(logging_level="WARNING", log_to_driver=False)
    try:
        print(json.dumps(asyncio.run(_load(args.deployment, args.app, args.seconds, args.concurrency))), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
