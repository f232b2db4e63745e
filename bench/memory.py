"""Resident memory (and CPU time) of the benchmark's own Serve instance, sampled while it runs.

Only descendants of the `serve run` process are counted: `serve run` starts the local Ray (GCS,
raylet, dashboard, agents), whose raylet forks every worker, so this tree is exactly this
benchmark's cluster even when other Ray instances run on the same machine. Replicas are
recognised by the process title Ray gives them, `ray::ServeReplica:<app>:<Deployment>`.

Two totals are kept. The sum of RSS double-counts pages several processes share (the torch
libraries every replica maps, the object store), so it is an upper bound; the sum of PSS
splits each shared page between its users and is what the cluster really costs the machine.
Per-replica peaks use the kernel's own high-water mark (VmHWM) where Linux provides it, so a
spike between two samples is not missed.

Reading PSS is not free: the kernel walks every mapping of every process (~140 ms of CPU for
the 30 processes of the CPU profile, against ~6 ms for RSS). `pss_paused()` turns PSS reads off
while latency or throughput is timed, so the measuring does not slow what it measures; the run
takes PSS under its heaviest load instead (see bench/run.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import ray  # noqa: F401  -- makes Ray's vendored psutil importable (ray/thirdparty_files)
import psutil

MIB = 1024 * 1024
# A replica's title is `ray::ServeReplica:<app>:<Deployment>`, with `.<method>` appended while a call runs.
_REPLICA = re.compile(r"ServeReplica:(?P<app>[^:\s]+):(?P<deployment>[^\s:.]+)")


def process_role(proc: psutil.Process) -> str:
    """`<Deployment>` for a Serve replica, else a short name (`ServeController`, `raylet`, `gcs_server`, ...)."""
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    found = _REPLICA.search(title)
    if found:
        return found.group("deployment")
    if title.startswith("ray::"):  # `ray::<Actor>` or `ray::<Actor>.<method>` while a call runs
        return title.split()[0].removeprefix("ray::").split(".")[0]
    return proc.name()


def _high_water_mark(pid: int) -> int | None:
    """Peak RSS (bytes) the kernel recorded for `pid`, or None off Linux."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class _Seen:
    role: str
    peak_rss: int = 0
    peak_pss: int = 0
    cpu_s: float = 0.0  # user + system CPU seconds at the last sample
    is_replica: bool = False


@dataclass
class ClusterSampler:
    """Samples the process tree under `root_pid` every `interval_s` on a background thread.

    `deployments` are the Serve deployment names whose replicas are reported one by one; the
    CPU time of the tree is kept too, so the run can tell its own CPU use from other work's.
    """

    root_pid: int
    deployments: list[str]
    interval_s: float = 0.5
    pss_every: int = 4  # PSS reads smaps_rollup: take it every few samples only
    processes: dict[int, _Seen] = field(default_factory=dict)
    peak_rss_sum: int = 0
    peak_pss_sum: int = 0
    samples: int = 0
    pss_samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _pss_on: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._pss_on.set()

    @contextmanager
    def pss_paused(self) -> Iterator[None]:
        """RSS, peaks and CPU keep being sampled; the costly PSS reads stop until the block ends."""
        self._pss_on.clear()
        try:
            yield
        finally:
            self._pss_on.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cluster-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        with_pss = self._pss_on.is_set() and self.samples % self.pss_every == 0
        rss_sum = pss_sum = 0
        for proc in self._tree():
            pss = 0
            try:
                if with_pss:
                    info = proc.memory_full_info()
                    pss = getattr(info, "pss", info.rss)
                else:
                    info = proc.memory_info()
                rss = info.rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss_sum += pss
            seen = self.processes.get(proc.pid)
            if seen is None:
                seen = self.processes[proc.pid] = _Seen(process_role(proc))
            elif not seen.is_replica:
                # a worker takes its replica title only once its actor starts: re-read until it has one
                seen.role = process_role(proc)
            seen.is_replica = seen.is_replica or seen.role in self.deployments
            seen.peak_rss = max(seen.peak_rss, rss, _high_water_mark(proc.pid) or 0)
            seen.peak_pss = max(seen.peak_pss, pss)
            try:
                times = proc.cpu_times()
                seen.cpu_s = times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            rss_sum += rss
        self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)
        if with_pss:
            self.peak_pss_sum = max(self.peak_pss_sum, pss_sum)
            self.pss_samples += 1
        self.samples += 1

    def cpu_seconds(self) -> float:
        """CPU time (user + system) every process of the tree has used, as of the last sample."""
        return sum(seen.cpu_s for seen in self.processes.values())

    def result(self) -> dict[str, Any]:
        """Per deployment: replicas seen and the largest replica's peak RSS; the cluster's peak RSS and PSS sums."""
        per_deployment: dict[str, dict[str, Any]] = {}
        for name in self.deployments:
            replicas = [s for s in self.processes.values() if s.role == name]
            peaks = [s.peak_rss for s in replicas]
            per_deployment[name] = {
                "replicas_seen": len(replicas),
                "peak_rss_mib": round(max(peaks) / MIB, 1) if peaks else None,
                "peak_rss_all_replicas_mib": round(sum(peaks) / MIB, 1) if peaks else None,
                "peak_pss_mib": round(max(s.peak_pss for s in replicas) / MIB, 1) if replicas else None,
            }
        others: dict[str, float] = {}
        for seen in self.processes.values():
            if seen.role not in self.deployments:
                others[seen.role] = round(max(others.get(seen.role, 0.0), seen.peak_rss / MIB), 1)
        return {
            "deployments": per_deployment,
            "other_processes_peak_rss_mib": dict(sorted(others.items(), key=lambda kv: -kv[1])),
            "cluster_peak_rss_sum_mib": round(self.peak_rss_sum / MIB, 1),
            "cluster_peak_pss_sum_mib": round(self.peak_pss_sum / MIB, 1),
            "processes_seen": len(self.processes),
            "samples": self.samples,
            "pss_samples": self.pss_samples,
            "interval_s": self.interval_s,
        }

