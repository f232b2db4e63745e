"""`python -m bench.cpu_split`: where a served clip's CPU time goes, and what that allows at concurrency.

Starts the profile with `serve run` (as `bench.run` does), then for each concurrency level sends
the `video_720p` clip back to back from that many clients and reads every process of the Serve
tree's CPU time (user + system, all threads) before and after: CPU milliseconds per answered
clip by process role (a deployment's replicas together, `ServeController`, `raylet`, ...), the
cores the whole tree kept busy, and clips per minute. Before the load it also measures the
idle tree for `--idle-seconds`: what the cluster burns doing nothing.

Why it exists: throughput at concurrency c can only exceed throughput at concurrency 1 by the
cores concurrency 1 leaves idle. With `busy(c)` the cores the tree keeps busy at c,
`throughput(4) / throughput(1) = busy(4) / busy(1) × cpu_per_clip(1) / cpu_per_clip(4)`, so the
report prints the ratio's ceiling on this machine, `cores / busy(1)` at equal CPU per clip.
Asserts nothing; writes `bench/results/cpu-split-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray  # noqa: F401  -- makes Ray's vendored psutil importable (ray/thirdparty_files)
import psutil

from bench import served
from bench.machine import load_average, machine_info, parallel_capacity, write_result
from bench.memory import process_role
from bench.profile import Profile
from bench.workloads import DEFAULT_CACHE_DIR, generate, plan_workloads


def cpu_by_role(root: psutil.Process) -> dict[str, float]:
    """CPU seconds (user + system) so far of every live process in `root`'s tree, summed by role."""
    seconds: dict[str, float] = defaultdict(float)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seconds[process_role(proc)] += times.user + times.system
        except psutil.Error:  # exited between listing and reading
            continue
    return seconds


def per_clip_ms(before: dict[str, float], after: dict[str, float], clips: int) -> dict[str, float]:
    """CPU ms per clip by role, largest first; roles under 1 ms per clip are left out."""
    out = {role: (after[role] - before.get(role, 0.0)) * 1e3 / max(clips, 1) for role in after}
    return dict(sorted(((r, round(v, 1)) for r, v in out.items() if v >= 1.0), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests-per-client", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    (workload,) = plan_workloads(["video_720p"], video_seconds=args.video_seconds, long_seconds=3.0, audio_seconds=3.0)
    generate([workload], args.cache_dir)
    upload = served.Upload(workload.data(), workload.path.name if workload.path else workload.name)
    cores = psutil.cpu_count() or 1
    started = datetime.now(timezone.utc)
    record: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(), "profile": str(args.profile),
        "workload": workload.name, "cores": cores, "load_average_start": load_average(), "levels": [],
    }
    with tempfile.TemporaryDirectory(prefix="ss-cpu-split-") as tmp:
        instance = served.ServeInstance(Profile.load(args.profile).config, Path(tmp))
        try:
            instance.start()
            root = psutil.Process(instance.proc.pid)
            time.sleep(5.0)  # let start-up work (replica warm-up, first metrics) finish
            before = cpu_by_role(root)
            time.sleep(args.idle_seconds)
            after = cpu_by_role(root)
            idle = {r: round((after[r] - before.get(r, 0.0)) / args.idle_seconds, 3) for r in after}
            record["idle_cores"] = dict(sorted(((r, v) for r, v in idle.items() if v >= 0.001), key=lambda kv: -kv[1]))
            record["idle_cores_total"] = round(sum(idle.values()), 3)
            print(f"idle: the tree keeps {record['idle_cores_total']:.3f} cores busy", flush=True)
            served.latency(instance.url, upload, requests=2, warmups=1)  # warm every replica's first call
            record["parallel_capacity"] = {"before": parallel_capacity()}
            for c in args.concurrency:
                before, t0 = cpu_by_role(root), time.perf_counter()
                level = served.throughput(instance.url, upload, c, c * args.requests_per_client, window_s=600.0)
                after, elapsed = cpu_by_role(root), time.perf_counter() - t0
                busy = (sum(after.values()) - sum(before.values())) / elapsed
                split = per_clip_ms(before, after, level["ok"])
                entry = {**level, "busy_cores": round(busy, 3), "cpu_ms_per_clip": round(sum(split.values()), 1),
                         "cpu_ms_per_clip_by_role": split}
                record["levels"].append(entry)
                print(f"c{c}: {level['clips_per_min']:.1f} clips/min, p50 {level['p50_ms']:.0f} ms, "
                      f"{busy:.2f} of {cores} cores busy, {entry['cpu_ms_per_clip']:.0f} CPU ms per clip: {split}", flush=True)
            record["parallel_capacity"]["after"] = parallel_capacity()
            print(f"parallel capacity (work of one core): {record['parallel_capacity']}", flush=True)
        finally:
            instance.stop()
    levels = {lv["concurrency"]: lv for lv in record["levels"]}
    if 1 in levels and levels[1]["busy_cores"] > 0:
        record["ratio_ceiling_at_equal_cpu_per_clip"] = round(cores / levels[1]["busy_cores"], 3)
        print(f"throughput(c) / throughput(1) cannot exceed {record['ratio_ceiling_at_equal_cpu_per_clip']:.2f} "
              f"on {cores} cores at equal CPU per clip", flush=True)
    record["load_average_end"] = load_average()
    write_result(args.out, "cpu-split", started, record)


if __name__ == "__main__":
    main()
