"""`python -m bench.ablate_decode`: what one decoder choice buys, against the same decoder without it.

Decodes the benchmark's `video_720p` and `video_1080p_long` clips with `media.decode_media`
as served (the profile's MediaDecoder settings), once as shipped and once with one choice
undone, alternating the two so drift in machine load hits both. `--compare` picks the choice:

- `skip` (default): skipping unsampled non-reference pictures is switched off (every picture in
  a decoded group of pictures goes through the decoder, as before that change);
- `threads`: the profile's `frame_threads` is flipped (FFmpeg frame threads against one
  decoding thread).

The benchmark's clips come out of libx264 with sliced threads: two slices per picture, which
FFmpeg's slice threads decode in parallel. Most H.264 in the wild has one slice per picture, so
`--single-slice` adds a re-encode of each clip with one slice per picture (libx264 frame
threads, same quality settings, audio copied) to the comparison.

Reports the median wall time and process CPU time of each, with and without face analysis,
plus the number of pictures the decoder returned, and checks that both give identical frames.
Asserts nothing else; writes `bench/results/ablate-decode[-threads]-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import av
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


def single_slice_copy(data: bytes) -> bytes:
    """`data` re-encoded with libx264 at one slice per picture (frame-threaded x264), audio packets copied."""
    out_buffer = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out_buffer, "w", format="mp4") as out:
        video_in = source.streams.video[0]
        audio_in = source.streams.audio[0] if source.streams.audio else None
        video = out.add_stream("libx264", rate=video_in.average_rate)
        video.width, video.height, video.pix_fmt = video_in.width, video_in.height, "yuv420p"
        video.time_base = video_in.time_base
        video.options = {"crf": "16", "preset": "veryfast"}  # tests/mediagen's quality settings
        video.thread_type = "FRAME"  # x264 frame threads: one slice per picture (SLICE would cut several)
        audio = out.add_stream_from_template(audio_in) if audio_in is not None else None
        for packet in source.demux([s for s in (video_in, audio_in) if s is not None]):
            if packet.stream is video_in:
                for frame in packet.decode():
                    out.mux(video.encode(frame))
            elif packet.dts is not None:
                packet.stream = audio
                out.mux(packet)
        out.mux(video.encode(None))
    return out_buffer.getvalue()


@contextmanager
def unchanged() -> Iterator[None]:
    yield


def variants(compare: str, config: decode.DecodeConfig) -> dict[str, tuple[decode.DecodeConfig, Any]]:
    """Variant name -> (its DecodeConfig, a context manager factory around its decode); "shipped" first."""
    if compare == "skip":
        return {"shipped": (config, unchanged), "no_skip": (config, skip_disabled)}
    other = replace(config, frame_threads=not config.frame_threads)
    return {"shipped": (config, unchanged), "frame_threads" if other.frame_threads else "one_thread": (other, unchanged)}


def measure(data: bytes, configs: dict[str, tuple[decode.DecodeConfig, Any]], repeats: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    pictures: dict[str, int] = {}
    frames: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for variant, (config, around) in configs.items():
            counter: list[int] = []
            with counting_pictures(counter), around():
                wall, cpu = time.perf_counter(), time.process_time()
                clip = decode.decode_media(data, config)
                runs[variant].append((time.perf_counter() - wall, time.process_time() - cpu))
            pictures[variant] = len(counter)
            frames[variant] = clip.frames
    first, other = list(configs)
    return {
        variant: {
            "wall_ms": 1000 * statistics.median(w for w, _ in values),
            "cpu_ms": 1000 * statistics.median(c for _, c in values),
            "pictures_decoded": pictures[variant],
        }
        for variant, values in runs.items()
    } | {"identical_frames": bool(np.array_equal(frames[first], frames[other]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--compare", choices=["skip", "threads"], default="skip")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--single-slice", action="store_true", help="also decode one-slice-per-picture re-encodes")
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
    uploads = [(workload.name, workload.data()) for workload in workloads]
    if args.single_slice:
        uploads += [(f"{name} (one slice)", single_slice_copy(data)) for name, data in uploads]
    for name, data in uploads:
        for faces in (False, True):
            key = f"{name}/{'decode+faces' if faces else 'decode only'}"
            configs = variants(args.compare, replace(config, analyze_faces=faces))
            results[key] = r = measure(data, configs, args.repeats)
            text = "; ".join(
                f"{name} {r[name]['wall_ms']:.0f} ms wall / {r[name]['cpu_ms']:.0f} ms CPU, "
                f"{r[name]['pictures_decoded']} pictures"
                for name in configs
            )
            print(f"{key}: {text}; identical frames: {r['identical_frames']}", flush=True)
    record = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(), "profile": str(args.profile),
        "compare": args.compare, "single_slice": args.single_slice,
        "repeats": args.repeats, "load_average_start": load_start, "load_average_end": load_average(),
        "results": results,
    }
    write_result(args.out, "ablate-decode" if args.compare == "skip" else "ablate-decode-threads", started, record)


if __name__ == "__main__":
    main()
