"""`python -m bench.run` (`make bench`): floor, in-process and served numbers for every workload, in one run.

Order matters for fairness: media is generated first, then everything in-process is measured
while no Ray runs, then `serve run` is started (its cold start timed) and each workload is sent
at each concurrency level, PSS sampled during the highest. The early-exit workload comes last
because it redeploys FastTriage's thresholds; the profile's own are deployed back afterwards.
Results go to `<out>/<UTC timestamp>-<host>.json` and the markdown page is rendered from them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import yaml

from bench import inprocess, served
from bench.memory import PssSampler
from bench.report import evaluate_targets, render
from bench.workloads import DEFAULT_CACHE_DIR, WORKLOAD_NAMES, Workload, generate, plan_workloads

# (full, quick) defaults; an option given on the command line wins over both.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "requests": (20, 2),
    "repeats": (5, 2),
    "video_seconds": (10.0, 3.0),
    "long_seconds": (60.0, 3.0),
    "audio_seconds": (10.0, 10.0),  # quick too: on a few s of test speech the voice model abstains (AV v4)
}
_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s clips (audio 10 s), 2 requests per client")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="directory for the result JSON")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"), help="page rendered from the result")
    parser.add_argument("--profile", type=Path, default=Path("cluster/serve.cpu.yaml"), help="Serve config")
    parser.add_argument("--url", help="load this running service (127.0.0.1 only) instead of starting one; "
                                      "no cold start, and the early-exit workload is not served")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=list(WORKLOAD_NAMES))
    parser.add_argument("--requests", type=int, help="uploads per client at each level; full 20, quick 2")
    parser.add_argument("--repeats", type=int, help="in-process and floor runs per median; full 5, quick 2")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="served load levels")
    parser.add_argument("--video-seconds", type=float, help="the 720p (and early-exit) clip; full 10, quick 3")
    parser.add_argument("--long-seconds", type=float, help="the 1080p clip; full 60, quick 3")
    parser.add_argument("--audio-seconds", type=float, help="the audio file; full and quick 10")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="generated media, kept between runs")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.concurrency = sorted(set(args.concurrency))
    args.url = served.local_url(args.url) if args.url else None
    return args


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    git = ["git", "-C", str(served.REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    status = [*git, "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True).stdout
    return {
        "host": platform.node().split(".")[0] or "host",
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "logical_cores": psutil.cpu_count(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": f"{torch.__version__} / {version('ray')} / {version('av')}",
        "commit": commit + (" with uncommitted changes" if dirty.strip() else ""),
        "python": platform.python_version(),
    }


def upload_of(workload: Workload) -> served.Upload:
    return served.Upload(workload.data(), workload.path.name if workload.path else workload.name)


def serve_levels(url: str, workload: Workload, args: argparse.Namespace, sampler: PssSampler) -> list[dict[str, Any]]:
    """Each concurrency level; PSS is sampled during the highest (most requests in flight).

    Warm-up: one upload per client of the highest level at once, so every replica the levels use
    (both MediaDecoders of the CPU profile) has served this upload before anything is timed.
    """
    upload = upload_of(workload)
    served.load(url, upload, args.concurrency[-1], 1)
    levels = []
    for c in args.concurrency:
        log(f"served: {workload.name} at c={c}, {c * args.requests} uploads")
        with sampler.during() if c == args.concurrency[-1] else nullcontext():
            levels.append(served.summarize(c, *served.load(url, upload, c, args.requests)))
    return levels


def measure_served(
    config: dict[str, Any], workloads: list[Workload], found: dict[str, dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Cold start (unless `--url`), then every workload over HTTP, early exit last; fills `found[name]["served"]`."""
    run: dict[str, Any] = {"url": args.url, "cold_start_s": None, "memory": None, "served_error": None}
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as tmp:
        instance = None if args.url else served.ServeInstance(config, Path(tmp))
        sampler = PssSampler(None)
        try:
            if instance is not None:
                log(f"served: serve run {args.profile} on {instance.url}")
                run["cold_start_s"] = instance.start()
                run["url"], sampler = instance.url, PssSampler(instance.proc.pid)
                log(f"served: ready after {run['cold_start_s']:.1f} s")
            for workload in sorted(workloads, key=lambda w: bool(w.triage_overrides)):
                if not workload.triage_overrides:
                    found[workload.name]["served"] = {"levels": serve_levels(run["url"], workload, args, sampler)}
                elif instance is not None:
                    found[workload.name]["served"] = serve_early_exit(instance, config, workload, args, sampler)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            # keep what was measured: the page shows the served columns as missing and says why
            run["served_error"] = f"{type(exc).__name__}: {exc}"
            log(f"served: failed: {run['served_error']}")
        finally:
            run["memory"] = sampler.result() if sampler.samples else None
            if instance is not None:
                log("served: stopping")
                instance.stop()
    return run


def serve_early_exit(
    instance: served.ServeInstance, config: dict[str, Any], workload: Workload, args: argparse.Namespace,
    sampler: PssSampler,
) -> dict[str, Any]:
    """The workload's levels with its FastTriage thresholds deployed, the profile's restored afterwards."""
    upload = upload_of(workload)
    log(f"served: serve deploy FastTriage {workload.triage_overrides}")
    instance.deploy(served.with_triage(config, workload.triage_overrides))
    result: dict[str, Any] = {"overrides_applied": served.wait_for_early_exit(instance.url, upload, expected=True)}
    try:
        result["levels"] = serve_levels(instance.url, workload, args, sampler)
    finally:
        instance.deploy(config)
        result["restored"] = served.wait_for_early_exit(instance.url, upload, expected=False)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started_at = datetime.now(timezone.utc)
    config = yaml.safe_load(args.profile.read_text())
    workloads = plan_workloads(args.workloads, video_seconds=args.video_seconds, long_seconds=args.long_seconds,
                               audio_seconds=args.audio_seconds)
    generate(workloads, args.cache_dir, log)

    pipe = inprocess.load_pipeline(config)
    found: dict[str, dict[str, Any]] = {}
    for workload in workloads:
        log(f"in-process: {workload.name}")
        local = inprocess.with_triage(pipe, workload.triage_overrides) if workload.triage_overrides else pipe
        measured = inprocess.measure(local, workload.data(), args.repeats)
        found[workload.name] = {"workload": workload.summary(), **measured}
    serving = measure_served(config, workloads, found, args)

    machine = machine_info()
    result: dict[str, Any] = {
        "schema": 2,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "weights": pipe.versions,  # what the in-process side loaded, from the profile's user_configs
        "workloads": found,
        **serving,
    }
    result["targets"] = evaluate_targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started_at.strftime('%Y%m%dT%H%M%SZ')}-{machine['host']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    args.markdown.write_text(render(result, str(path)))
    log(f"wrote {path} and {args.markdown}")
    for target in result["targets"]:
        log(f"{target['target']}: {target['measured']} -> {target['met']}")
    if serving["served_error"] is not None:
        raise SystemExit(f"the served part failed ({serving['served_error']}); see {path}")


if __name__ == "__main__":
    main()
