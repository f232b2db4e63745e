"""`python -m bench.ablate_decode`: what skipping unsampled non-reference pictures buys the decoder.

Decodes the benchmark's `video_720p` and `video_1080p_long` clips with `media.decode_media`
as served (the profile's MediaDecoder settings), once as shipped and once with the skip
switched off (every picture in a decoded group of pictures goes through the decoder, as
before the change), alternating the two so drift in machine load hits both. Reports the
median wall time and process CPU time of each, with and without face analysis, plus the
number of pictures the decoder returned, and checks that both give identical frames.
Asserts nothing else; writes `bench/results/ablate-decode-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import media.decode as decode
from bench.machine import load_average, machine_info, write_result
from bench.profile import Profile
from bench.workloads import DEFAULT_CACHE_DIR, generate, plan_workloads
from deployments.decoder import MediaDecoderDeployment


class _Everything:
    """A set that contains every packet index."""

    def __contains__(self, item: object) -> bool:
        return True


@contextmanager
def skip_disabled() -> Iterator[None]:
    """Every packet of a needed group counts as sampled, so the decoder never skips a picture."""
    original = decode._plan_grid

    def plan_without_skip(*args: Any, **kwargs: Any) -> Any:
        grid = original(*args, **kwargs)
        grid.shown_packets = _Everything()
        return grid

    decode._plan_grid = plan_without_skip
    try:
        yield
    finally:
        decode._plan_grid = original


@contextmanager
def counting_pictures(counter: list[int]) -> Iterator[None]:
    original = decode._FramePicker.offer

    def offer(self: Any, frame: Any) -> None:
        counter.append(1)
        original(self, frame)

    decode._FramePicker.offer = offer
    try:
        yield
    finally:
        decode._FramePicker.offer = original


def measure(data: bytes, config: decode.DecodeConfig, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {"shipped": [], "no_skip": []}
    pictures: dict[str, int] = {}
    frames: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for variant in ("shipped", "no_skip"):
            counter: list[int] = []
            with counting_pictures(counter):
                if variant == "no_skip":
                    with skip_disabled():
                        wall, cpu = time.perf_counter(), time.process_time()
                        clip = decode.decode_media(data, config)
                else:
                    wall, cpu = time.perf_counter(), time.process_time()
                    clip = decode.decode_media(data, config)
                runs[variant].append((time.perf_counter() - wall, time.process_time() - cpu))
            pictures[variant] = len(counter)
            frames[variant] = clip.frames
    return {
        variant: {
            "wall_ms": 1000 * statistics.median(w for w, _ in values),
            "cpu_ms": 1000 * statistics.median(c for _, c in values),
            "pictures_decoded": pictures[variant],
        }
        for variant, values in runs.items()
    } | {"identical_frames": bool(np.array_equal(frames["shipped"], frames["no_skip"]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    workloads = plan_workloads(
        ["video_720p", "video_1080p_long"], video_seconds=10.0, long_seconds=args.long_seconds, audio_seconds=10.0
    )
    generate(workloads, args.cache_dir)
    decoder = MediaDecoderDeployment.func_or_class()  # configured exactly as bench.inprocess and Serve do
    decoder.reconfigure(Profile.load(args.profile).user_config("MediaDecoder"))
    config = decoder.config
    started = datetime.now(timezone.utc)
    load_start = load_average()
    decode.decode_media(workloads[0].data(), config)  # warm: dlib models, codec tables
    results: dict[str, Any] = {}
    for workload in workloads:
        data = workload.data()
        for faces in (False, True):
            key = f"{workload.name}/{'decode+faces' if faces else 'decode only'}"
            results[key] = measure(data, replace(config, analyze_faces=faces), args.repeats)
            r = results[key]
            print(
                f"{key}: shipped {r['shipped']['wall_ms']:.0f} ms wall / {r['shipped']['cpu_ms']:.0f} ms CPU, "
                f"{r['shipped']['pictures_decoded']} pictures; without the skip {r['no_skip']['wall_ms']:.0f} ms wall / "
                f"{r['no_skip']['cpu_ms']:.0f} ms CPU, {r['no_skip']['pictures_decoded']} pictures; "
                f"identical frames: {r['identical_frames']}",
                flush=True,
            )
    record = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(), "profile": str(args.profile),
        "repeats": args.repeats, "load_average_start": load_start, "load_average_end": load_average(),
        "results": results,
    }
    write_result(args.out, "ablate-decode", started, record)


if __name__ == "__main__":
    main()
