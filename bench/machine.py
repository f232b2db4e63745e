"""What machine a result came from: numbers from different machines are not comparable without it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import ray  # noqa: F401  -- makes Ray's vendored psutil importable (ray/thirdparty_files)
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the repository (read-only), so a result names the code it measured."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every number."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": _package("ray"),
        "av": _package("av"),
        "git_commit": git_commit(),
    }


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent not idle since boot (steal counts: another VM had the core)."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def _own_cpu_s() -> float:
    """This process's CPU seconds, plus those of the children it has reaped (the `serve deploy` CLI runs)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _hash_chain(n: int, out: multiprocessing.Queue) -> None:
    """A fixed CPU-bound kernel that fits in L1 (SHA-256 of its own digest, `n` times); puts its wall seconds."""
    started = time.perf_counter()
    digest = b"spectrashield"
    for _ in range(n):
        digest = hashlib.sha256(digest).digest()
    out.put(time.perf_counter() - started)


def _kernel_walls(copies: int, n: int) -> list[float]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    workers = [ctx.Process(target=_hash_chain, args=(n, out)) for _ in range(copies)]
    for worker in workers:
        worker.start()
    walls = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    return walls


def parallel_capacity(rounds: int = 5, n: int = 500_000) -> dict[str, Any]:
    """How much work all the cores busy at once do, in units of one busy core: 2.0 on two real cores.

    Each round times the same CPU-bound kernel alone, then as one copy per core at once. A virtual machine's cores can be hyperthreads of one host core, or share it
    with other guests: this one's two vCPUs measured anywhere from 1.2x to 2.2x one vCPU within
    minutes, with no steal time reported. Throughput at concurrency 4 over concurrency 1 is
    bounded by it.
    """
    copies = os.cpu_count() or 1
    ratios = []
    for _ in range(rounds):
        alone = _kernel_walls(1, n)[0]
        together = _kernel_walls(copies, n)
        ratios.append(copies * alone / statistics.fmean(together))
    return {
        "copies": copies,
        "rounds": rounds,
        "median": round(statistics.median(ratios), 2),
        "min": round(min(ratios), 2),
        "max": round(max(ratios), 2),
    }


@dataclass
class CpuAccount:
    """How much CPU other work used while the benchmark ran: the load average alone cannot tell.

    The load average counts the benchmark's own processes too; this subtracts them (this process
    and the Serve process tree) from what the whole machine did over the same wall time.
    """

    started: float
    busy_at_start: float
    own_at_start: float

    @classmethod
    def start(cls) -> CpuAccount:
        return cls(time.monotonic(), _machine_busy_s(), _own_cpu_s())

    def finish(self, serve_tree_cpu_s: float) -> dict[str, float]:
        """`serve_tree_cpu_s`: CPU of the Serve processes, which must still be alive (not yet reaped into ours)."""
        wall = time.monotonic() - self.started
        busy = _machine_busy_s() - self.busy_at_start
        own = _own_cpu_s() - self.own_at_start + serve_tree_cpu_s
        other = max(busy - own, 0.0)
        capacity = wall * (os.cpu_count() or 1)
        return {
            "wall_s": round(wall, 1),
            "machine_busy_core_s": round(busy, 1),
            "benchmark_core_s": round(own, 1),
            "other_core_s": round(other, 1),
            "other_share_of_capacity": round(other / capacity, 3) if capacity else 0.0,
        }


def write_result(out_dir: Path, prefix: str, started: datetime, record: dict[str, Any]) -> Path:
    """`record` as `<out_dir>/<prefix>-<UTC start>.json`; prints and returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
