"""`python -m bench.run` (`make bench`): floor, in-process and served numbers for every workload, in one run.

Order matters for fairness: media is generated first, then everything in-process is measured
while no Ray runs, then `serve run` is started (its cold start timed) and loaded over HTTP while
its processes' memory is sampled. Each workload's served latency is also measured paired: served
requests alternating with in-process runs of the same pipeline in this process (and, for the
early exit, with its decode floor), so the targets compare the two sides on the same machine state
(this machine's speed drifts by tens of percent within an hour; the separate phases are minutes
apart). The early-exit workload comes last because it redeploys FastTriage's thresholds; the
profile's own thresholds are deployed back afterwards.

`video_720p`'s throughput levels 1 and 4 are each followed by the in-process pipeline running
back to back in that many worker processes at once (`bench.ceiling.WorkerPool`, no Ray), for as
long as the served level took: what concurrency can buy this pipeline on this machine, measured in
the same minutes as the served levels it bounds.

Results go to `<out>/<UTC timestamp>-<host>.json` and `BENCHMARKS.md` is regenerated from them.
Benchmarks assert nothing: a missed target is a row in the table, not an exit status.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import inprocess, served
from bench.ceiling import WorkerPool
from bench.machine import CpuAccount, load_average, machine_info, parallel_capacity
from bench.memory import ClusterSampler
from bench.profile import Profile
from bench.report import evaluate_targets, render
from bench.workloads import DEFAULT_CACHE_DIR, WORKLOAD_NAMES, Workload, generate, plan_workloads
from media import decode_media

# (full, quick) defaults; any option given on the command line wins over both.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "requests": (20, 3),
    "pairs": (20, 2),  # 10 left the early-exit judgement swinging: single requests ranged 0.6-1.1 s
    "repeats": (5, 2),
    "level_seconds": (90.0, 10.0),
    "requests_per_client": (10, 1),  # 4 per client left c4/c1 swinging by 0.3 between identical runs
    "video_seconds": (10.0, 3.0),
    "long_seconds": (60.0, 3.0),
    "audio_seconds": (10.0, 3.0),
}
_T0 = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - _T0
    print(f"[bench {int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="SpectraShield benchmark: floor vs in-process vs served, throughput, memory, cold start.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 s clips, 3 requests, short throughput levels (a few minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for the result JSON")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"), help="report regenerated from the result")
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"), help="Serve config to run")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=list(WORKLOAD_NAMES))
    parser.add_argument("--requests", type=int, help="timed requests at concurrency 1 (after 2 warm-ups); full 20, quick 3")
    parser.add_argument("--pairs", type=int,
                        help="served requests alternating with in-process runs, per workload (0: none); full 20, quick 2")
    parser.add_argument("--repeats", type=int, help="in-process runs per measurement (median); full 5, quick 2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="throughput levels")
    parser.add_argument("--level-seconds", type=float, help="time bound per throughput level; full 90, quick 10")
    parser.add_argument("--requests-per-client", type=int,
                        help="request bound per throughput level, per client; full 10, quick 1")
    parser.add_argument("--video-seconds", type=float, help="duration of the 720p clip (and early-exit clip); full 10, quick 3")
    parser.add_argument("--long-seconds", type=float,
                        help="duration of the 1080p clip; full 60, quick 3 (generating 60 s takes minutes; cached)")
    parser.add_argument("--audio-seconds", type=float, help="duration of the audio file; full 10, quick 3")
    parser.add_argument("--in-process-scaling", action=argparse.BooleanOptionalAction, default=True,
                        help="after video_720p's served levels 1 and 4, the in-process pipeline in 1 and 4 worker "
                             "processes at once (no Ray) for as long as each level took; needs both levels")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where generated media is kept between runs (never inside the repository)")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def measure_in_process(
    profile: Profile, workloads: list[Workload], repeats: int
) -> tuple[dict[str, dict[str, Any]], inprocess.InProcessGraph]:
    """Floor and in-process pipeline for every workload, before any Ray process exists; the graph is kept for pairing."""
    graph, models = inprocess.prepare(profile)
    results = {}
    for workload in workloads:
        log(f"in-process: {workload.name}")
        results[workload.name] = inprocess.measure(graph, models, workload.data(), workload.triage_overrides, repeats)
    return results, graph


def measure_served(
    instance: served.ServeInstance,
    profile: Profile,
    workload: Workload,
    args: argparse.Namespace,
    pss_paused: Callable[[], AbstractContextManager[Any]] = nullcontext,
    graph: inprocess.InProcessGraph | None = None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Latency at concurrency 1 (alone, then paired with `graph`'s in-process runs) and throughput per level.

    With `pool`, each served level at 1 and at the pool's size is followed by that many of the pool's
    in-process pipelines running at once, for as long as the served level took; the pool is closed
    after its last level.

    The machine's parallel capacity (`parallel_capacity`) is probed just before and after the
    throughput levels, with the cluster idle: the c4 / c1 ratio cannot exceed it.

    Redeploys FastTriage around an early-exit workload (and reconfigures `graph`'s the same way).
    The memory sampler's PSS reads (~140 ms of CPU each) are paused while latency and every
    throughput level but the highest are timed; the highest level, where the most requests are
    in flight and memory peaks, is timed with them on.
    """
    upload = served.Upload(workload.data(), workload.path.name if workload.path else workload.name)
    result: dict[str, Any] = {}
    if workload.triage_overrides:
        log(f"served: serve deploy FastTriage {workload.triage_overrides}")
        instance.deploy(profile.with_triage(workload.triage_overrides))
        result["overrides_applied"] = served.wait_for_early_exit(instance.url, upload, expected=True)
    try:
        log(f"served: {workload.name} latency, {args.requests} requests")
        with pss_paused():
            result["latency"] = served.latency(instance.url, upload, args.requests)
        if graph is not None and args.pairs > 0:
            log(f"served: {workload.name} paired with in-process runs, {args.pairs} pairs")
            data = workload.data()
            local = {"in_process": lambda: graph.run(data).timings_ms["total"]}
            if workload.triage_overrides:  # the early-exit target's floor, in the same minutes
                local["decode_faces_floor"] = lambda: inprocess.wall_ms(lambda: decode_media(data, graph.decoder.config))
            with pss_paused(), graph.triage_overrides(workload.triage_overrides):
                result["paired"] = served.paired(instance.url, upload, args.pairs, local)
        result["throughput"] = []
        result["parallel_capacity"] = {"before": parallel_capacity()}
        for c in args.concurrency:
            log(f"served: {workload.name} throughput at c={c}")
            with pss_paused() if c < max(args.concurrency) else nullcontext():
                level = served.throughput(instance.url, upload, c, c * args.requests_per_client, args.level_seconds)
            result["throughput"].append({**level, "pss_sampled": c == max(args.concurrency)})
            if pool is not None and c in (1, pool.size):
                log(f"in-process: {workload.name} in {c} pipelines at once, {level['elapsed_s']:.0f} s (no Ray)")
                with pss_paused():
                    result.setdefault("in_process_scaling", []).append(pool.level(c, level["elapsed_s"]))
                if c == pool.size:
                    # gone before any PSS read: its processes share torch's pages with the replicas,
                    # and PSS splits shared pages among every process mapping them
                    pool.close()
        result["parallel_capacity"]["after"] = parallel_capacity()
    finally:
        if workload.triage_overrides:
            log("served: restoring the profile's FastTriage thresholds")
            instance.deploy(profile.config)
            result["restored"] = served.wait_for_early_exit(instance.url, upload, expected=False)
    return result


def measure_serving(
    profile: Profile,
    workloads: list[Workload],
    per_workload: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    cpu: CpuAccount,
    graph: inprocess.InProcessGraph | None = None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    """Cold start, then every workload over HTTP (early exit last), with the process tree sampled throughout.

    `pool` (in-process pipelines for `video_720p`'s scaling) is closed right after its last level,
    and at the latest before the CPU account closes, so its processes' CPU is counted as the
    benchmark's own.

    Fills `per_workload[name]["served"]`; returns the cold start, the memory result, the error that
    stopped the served part (None when none did), the load average at the end, and the CPU account,
    closed while the Serve processes are still alive (once reaped, their CPU time would also show up
    in this process's children's and be counted twice).
    """
    deployments = [d["name"] for d in profile.app["deployments"]]
    found: dict[str, Any] = {"cold_start_s": None, "memory": None, "served_error": None}
    samplers: list[ClusterSampler] = []

    def sample_from(pid: int) -> None:
        samplers.append(ClusterSampler(pid, deployments))
        samplers[-1].start()

    with tempfile.TemporaryDirectory(prefix="ss-bench-") as tmp:
        instance = served.ServeInstance(profile.config, Path(tmp), log)
        try:
            log(f"served: starting serve run {args.profile} on {instance.url}")
            found["cold_start_s"] = instance.start(on_launch=sample_from)
            log(f"served: ready after {found['cold_start_s']:.1f} s")
            ordered = [w for w in workloads if not w.triage_overrides] + [w for w in workloads if w.triage_overrides]
            for workload in ordered:
                per_workload[workload.name]["served"] = measure_served(
                    instance, profile, workload, args, samplers[0].pss_paused if samplers else nullcontext,
                    graph, pool if workload.name == "video_720p" else None,
                )
        except (RuntimeError, OSError) as exc:
            # keep what was measured: the report shows the served columns as missing and says why
            found["served_error"] = f"{type(exc).__name__}: {exc}"
            log(f"served: failed: {found['served_error']}")
        finally:
            if pool is not None:
                pool.close()  # normally closed after its last level already; reaped here whatever happened
            for sampler in samplers:
                sampler.stop()
                sampler.sample()  # a last look while every process is alive
            found["cpu_use"] = cpu.finish(sum(s.cpu_seconds() for s in samplers))
            found["load_at_end"] = load_average()
            log("served: stopping")
            instance.stop()
    if samplers:
        found["memory"] = samplers[0].result()
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = datetime.now(timezone.utc)
    loads = {"at_start": load_average()}
    cpu = CpuAccount.start()
    machine = machine_info()
    profile = Profile.load(args.profile)
    workloads = plan_workloads(
        args.workloads, video_seconds=args.video_seconds, long_seconds=args.long_seconds,
        audio_seconds=args.audio_seconds,
    )
    log(f"load average {loads['at_start']} on {machine['logical_cores']} cores; generating media in {args.cache_dir}")
    generate(workloads, args.cache_dir, log)

    pool = None
    video = next((w for w in workloads if w.name == "video_720p"), None)
    if args.in_process_scaling and video is not None and {1, 4} <= set(args.concurrency):
        log("in-process: starting 4 pipelines in worker processes for video_720p's scaling")
        pool = WorkerPool(args.profile, video.path, 4)  # loaded before anything is timed; idle until then
    per_workload, graph = measure_in_process(profile, workloads, args.repeats)
    gc.collect()

    loads["before_served"] = load_average()
    serving = measure_serving(profile, workloads, per_workload, args, cpu, graph, pool)
    loads["at_end"] = serving.pop("load_at_end")

    result: dict[str, Any] = {
        "schema": 1,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python -m bench.run", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "load_average": loads,
        "options": {
            "quick": args.quick, "profile": str(args.profile), "workloads": args.workloads,
            "requests": args.requests, "pairs": args.pairs, "repeats": args.repeats, "concurrency": args.concurrency,
            "level_seconds": args.level_seconds, "requests_per_client": args.requests_per_client,
            "video_seconds": args.video_seconds, "long_seconds": args.long_seconds, "audio_seconds": args.audio_seconds,
            "in_process_scaling": pool is not None,
        },
        "weights": profile.weight_versions(),
        "workloads": {
            w.name: {"workload": w.summary(), **per_workload[w.name]} for w in workloads
        },
        **serving,
    }
    result["targets"] = evaluate_targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}-{machine['host']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    args.markdown.write_text(render(result, str(path)))
    log(f"wrote {path} and {args.markdown}")
    for target in result["targets"]:
        log(f"{target['target']}: {target['measured']} -> "
            f"{ {True: 'met', False: 'missed', None: 'not measured'}[target['met']] }")
    if serving["served_error"] is not None:
        raise SystemExit(f"the served part failed ({serving['served_error']}); see {path}")


if __name__ == "__main__":
    main()
