"""`python -m bench.ceiling`: how far concurrency lifts throughput on this machine, with Ray and without.

Clips per minute of the `video_720p` pipeline at concurrency 1 and k, four ways, in rounds whose
order rotates so the machine's drift falls on each alike:

- in-process x1 / x k: one, then k, worker processes each running the in-process pipeline
  (`bench.inprocess.InProcessGraph`, the deployments' own code) back to back: no Ray, no HTTP,
  no object store;
- served c1 / c k: 1, then k, HTTP clients sending back to back to `serve run <profile>`
  (`bench.served.throughput`, as `bench.run` measures throughput).

Each round also probes the machine's parallel capacity (`bench.machine.parallel_capacity`). The
Serve instance idles through the in-process levels, so both ways pay its background cost.
The in-process ratio is what this machine allows the pipeline itself when k clips run at once;
the served ratio can reach it only if serving costs nothing extra under load. CPU per clip is
read for both (the worker processes' own CPU time; the whole `serve run` tree's for served).
Asserts nothing; writes `bench/results/ceiling-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.machine import load_average, machine_info, parallel_capacity, write_result
from bench.workloads import DEFAULT_CACHE_DIR, generate, plan_workloads


def _worker(profile_path: str, clip_path: str, commands: Any, results: Any) -> None:
    """One in-process pipeline: load, warm up, then run back to back inside each (start, end) window."""
    data = Path(clip_path).read_bytes()
    from bench.inprocess import InProcessGraph
    from bench.profile import Profile

    graph = InProcessGraph(Profile.load(Path(profile_path)))
    for _ in range(2):
        graph.run(data)
    results.put("ready")  # the pool counts these; a worker that dies first is noticed by its exit
    while (window := commands.get()) is not None:
        start, end = window
        time.sleep(max(0.0, start - time.time()))
        clips, cpu0 = 0, time.process_time()
        while time.time() < end:
            graph.run(data)
            clips += 1
        results.put({"clips": clips, "wall_s": time.time() - start, "cpu_s": time.process_time() - cpu0})


class WorkerPool:
    """`size` spawned in-process pipelines, idle between windows."""

    def __init__(self, profile: Path, clip: Path, size: int) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter each: no forked torch or FFmpeg state
        self.size = size
        self._closed = False
        self._commands = [ctx.Queue() for _ in range(size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(str(profile), str(clip), q, self._results), daemon=True)
            for q in self._commands
        ]
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            self._next(timeout_s=600)

    def _next(self, timeout_s: float) -> Any:
        """The next message from any worker; raises as soon as a worker has died instead of waiting it out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in self._procs if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"an in-process pipeline worker exited (exit codes {dead})") from None
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"no answer from the in-process pipeline workers in {timeout_s:.0f} s") from None

    def level(self, workers: int, seconds: float) -> dict[str, Any]:
        """`workers` pipelines at once for a `seconds` window; runs in flight at its end finish and count."""
        start = time.time() + 0.5
        for q in self._commands[:workers]:
            q.put((start, start + seconds))
        got = [self._next(timeout_s=seconds + 600) for _ in range(workers)]
        clips = sum(g["clips"] for g in got)
        wall = max(g["wall_s"] for g in got)
        return {
            "concurrency": workers, "clips": clips, "wall_s": round(wall, 2),
            "clips_per_min": clips / wall * 60.0 if wall > 0 else None,
            "cpu_ms_per_clip": round(sum(g["cpu_s"] for g in got) * 1e3 / max(clips, 1), 1),
        }

    def close(self) -> None:
        """Stop and reap the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for q in self._commands:
            q.put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def rotation(measures: list[str], round_index: int) -> list[str]:
    """The order of round `round_index`: `measures` rotated by one more place each round."""
    shift = round_index % len(measures)
    return measures[shift:] + measures[:shift]


def summarize(levels: dict[str, list[dict[str, Any]]], k: int) -> dict[str, Any]:
    """Median clips/min per measure, and the k-over-1 ratio of the medians and of each round."""
    medians = {name: statistics.median(lv["clips_per_min"] for lv in runs) for name, runs in levels.items() if runs}
    out: dict[str, Any] = {"median_clips_per_min": {n: round(v, 1) for n, v in medians.items()}}
    for way in ("in_process", "served"):
        one, many = f"{way}_c1", f"{way}_c{k}"
        if one in medians and many in medians:
            out[f"{way}_ratio"] = round(medians[many] / medians[one], 3)
            out[f"{way}_ratio_per_round"] = [
                round(b["clips_per_min"] / a["clips_per_min"], 3) for a, b in zip(levels[one], levels[many])
            ]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--concurrency", type=int, default=4, help="k: clips at once, against 1")
    parser.add_argument("--seconds", type=float, default=30.0, help="window per level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-process-only", action="store_true", help="skip the served levels (no Ray started)")
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    k = args.concurrency

    (workload,) = plan_workloads(["video_720p"], video_seconds=args.video_seconds, long_seconds=3.0, audio_seconds=3.0)
    generate([workload], args.cache_dir)
    started = datetime.now(timezone.utc)
    record: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "machine": machine_info(), "profile": str(args.profile),
        "workload": workload.description,
        "concurrency": k, "seconds": args.seconds, "rounds": args.rounds, "load_average_start": load_average(),
    }
    measures = ["in_process_c1", f"in_process_c{k}"]
    if not args.in_process_only:
        measures += ["served_c1", f"served_c{k}"]
    levels: dict[str, list[dict[str, Any]]] = {m: [] for m in measures}
    capacity: list[dict[str, Any]] = []
    pool = WorkerPool(args.profile, workload.path, k)
    instance = root = None
    with tempfile.TemporaryDirectory(prefix="ss-ceiling-") as tmp:
        try:
            if not args.in_process_only:
                from bench import served
                from bench.cpu_split import cpu_by_role  # first: imports Ray, whose vendored psutil follows
                from bench.profile import Profile

                import psutil

                instance = served.ServeInstance(Profile.load(args.profile).config, Path(tmp))
                instance.start()
                root = psutil.Process(instance.proc.pid)
                upload = served.Upload(workload.data(), workload.path.name)
                served.latency(instance.url, upload, requests=2, warmups=1)  # every replica's first call
            for r in range(args.rounds):
                for name in rotation(measures, r):
                    way, c = name.rsplit("_c", 1)
                    if way == "in_process":
                        level = pool.level(int(c), args.seconds)
                    else:
                        before, t0 = cpu_by_role(root), time.perf_counter()
                        level = served.throughput(instance.url, upload, int(c), max_requests=10**6, window_s=args.seconds)
                        after, elapsed = cpu_by_role(root), time.perf_counter() - t0
                        cpu = sum(after.values()) - sum(before.values())
                        level["cpu_ms_per_clip"] = round(cpu * 1e3 / max(level["ok"], 1), 1)
                        level["busy_cores"] = round(cpu / elapsed, 3)
                    levels[name].append(level)
                    print(f"round {r} {name}: {level['clips_per_min']:.1f} clips/min, "
                          f"{level['cpu_ms_per_clip']:.0f} CPU ms per clip", flush=True)
                capacity.append(parallel_capacity())
                print(f"round {r} parallel capacity: {capacity[-1]['median']:.2f} cores' work", flush=True)
        finally:
            pool.close()
            if instance is not None:
                instance.stop()
    record.update(levels=levels, parallel_capacity=capacity, summary=summarize(levels, k),
                  load_average_end=load_average())
    summary = record["summary"]
    print("medians (clips/min):", summary["median_clips_per_min"], flush=True)
    for way in ("in_process", "served"):
        if f"{way}_ratio" in summary:
            print(f"{way}: c{k} / c1 = {summary[f'{way}_ratio']:.2f} (rounds: {summary[f'{way}_ratio_per_round']})")
    write_result(args.out, "ceiling", started, record)
    return record


if __name__ == "__main__":
    main()
