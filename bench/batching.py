"""`python -m bench.batching`: what one shared forward pass costs per clip, by batch size.

For each `@serve.batch`ed deployment (FastTriage, CompressionResilient, Fusion) it calls the
deployment's own batch code (`_run_batch`, the code a replica runs for a batch, tensor
preparation included) on B copies of the `video_720p` clip's inputs, B = 1, 2, 4, 8, 16, and
reports wall and CPU milliseconds per clip (medians; the sizes alternate within each round). Batching pays where the per-clip cost
falls with B. The deployments are built as plain classes from the profile's `user_config`, on
the device a replica would use (CUDA when visible) with the torch threads a one-CPU replica
gets. Asserts nothing; writes `bench/results/batching-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from bench.machine import machine_info, write_result
from bench.profile import Profile
from bench.workloads import DEFAULT_CACHE_DIR, generate, plan_workloads


def _per_clip(call: Callable[[int], Any], sizes: list[int], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU ms per clip for each batch size; sizes alternate within every round, so
    a slow spell of a shared machine lands on all of them rather than on one."""
    for b in sizes:
        call(b)  # warm-up (allocator, kernels)
    walls: dict[int, list[float]] = {b: [] for b in sizes}
    cpus: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(repeats):
        for b in sizes:
            w, c = time.perf_counter(), time.process_time()
            call(b)
            walls[b].append(time.perf_counter() - w)
            cpus[b].append(time.process_time() - c)
    return {
        str(b): {
            "wall_ms_per_clip": round(statistics.median(walls[b]) * 1e3 / b, 2),
            "cpu_ms_per_clip": round(statistics.median(cpus[b]) * 1e3 / b, 2),
        }
        for b in sizes
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    from deployments.av_alignment import AVAlignmentDeployment
    from deployments.common import configure_torch_threads
    from deployments.compression import CompressionResilientDeployment
    from deployments.decoder import MediaDecoderDeployment
    from deployments.fusion import FusionDeployment
    from deployments.keyframes import KeyframeSelectorDeployment
    from deployments.triage import FastTriageDeployment

    profile = Profile.load(args.profile)
    (workload,) = plan_workloads(["video_720p"], video_seconds=args.video_seconds, long_seconds=3.0, audio_seconds=3.0)
    generate([workload], args.cache_dir)

    def built(cls, name: str):
        replica = cls.func_or_class()
        replica.reconfigure(profile.deployment(name).get("user_config", {}))
        return replica

    started = datetime.now(timezone.utc)
    threads = configure_torch_threads()
    decoder = built(MediaDecoderDeployment, "MediaDecoder")
    from media import decode_media

    clip = decode_media(workload.data(), decoder.config).without_frames()
    triage, selector = built(FastTriageDeployment, "FastTriage"), built(KeyframeSelectorDeployment, "KeyframeSelector")
    visual, av = built(CompressionResilientDeployment, "CompressionResilient"), built(AVAlignmentDeployment, "AVAlignment")
    fusion = built(FusionDeployment, "Fusion")
    first = triage._run(triage.weights.choose(), clip)
    keyframes = selector._run(clip, first.frame_scores)
    visual_branch = visual._run(visual.weights.choose(), clip, keyframes)
    av_result = av._run(av.weights.choose(), clip)
    branches = [first.branch, visual_branch, av_result.av, av_result.audio]
    calls = {
        "FastTriage": lambda b: triage._run_batch(triage.weights.choose(), [clip] * b),
        "CompressionResilient": lambda b: visual._run_batch(visual.weights.choose(), [clip] * b, [keyframes] * b),
        "Fusion": lambda b: fusion._run_batch(fusion.weights.choose(), [branches] * b),
    }
    record: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(), "profile": str(args.profile),
        "workload": workload.name, "device": triage.weights.device, "torch_threads": threads,
        "frames_per_clip": clip.n_frames, "crops_per_clip": len(set(keyframes.indices)), "repeats": args.repeats,
        "deployments": {},
    }
    print(f"{workload.name}: {clip.n_frames} frames, {record['crops_per_clip']} keyframe crops; "
          f"device {record['device']}, {threads} torch thread(s)")
    for name, call in calls.items():
        rows = _per_clip(call, args.batch_sizes, args.repeats)
        for b, row in rows.items():
            print(f"{name:>20} B={b:<3} {row['wall_ms_per_clip']:8.2f} ms wall/clip {row['cpu_ms_per_clip']:8.2f} ms CPU/clip",
                  flush=True)
        record["deployments"][name] = rows
    write_result(args.out, "batching", started, record)


if __name__ == "__main__":
    main()
