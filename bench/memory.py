"""PSS of the served processes, sampled on a thread while the heaviest load runs.

PSS splits each page several processes share (torch's libraries in every replica, the object
store) among them, so per-replica PSS adds up to what the cluster really occupies; RSS would
count shared pages once per process. Only the tree under the benchmark's own `serve run` is
counted, so another Ray on the machine is not; without one (`--url`), every Serve replica on
the machine is. Replicas are known by the title Ray gives them: `ray::ServeReplica:<app>:<Deployment>`.
A PSS read walks every mapping of a process (~5 ms each), so sampling is kept to one a second.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

MIB = 1024 * 1024
_REPLICA = re.compile(r"ServeReplica:[^:\s]+:(?P<deployment>[^\s:.]+)")


def deployment_of(cmdline: list[str]) -> str | None:
    found = _REPLICA.search(" ".join(cmdline))
    return found.group("deployment") if found else None


class PssSampler:
    """Peak PSS per replica (by deployment) and peak PSS summed over the tree under `root_pid`."""

    def __init__(self, root_pid: int | None) -> None:
        self.root_pid = root_pid
        self.replicas: dict[int, tuple[str, int]] = {}  # pid -> (deployment, peak PSS bytes)
        self.peak_sum = 0
        self.samples = 0

    def _processes(self) -> list[psutil.Process]:
        if self.root_pid is None:
            return list(psutil.process_iter())
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:  # `serve run` already gone
            return []

    def sample(self) -> None:
        total = 0
        for proc in self._processes():
            try:
                deployment = deployment_of(proc.cmdline())
                if deployment is None and self.root_pid is None:
                    continue
                pss = proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += pss
            if deployment is not None:
                peak = self.replicas.get(proc.pid, (deployment, 0))[1]
                self.replicas[proc.pid] = (deployment, max(peak, pss))
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1

    @contextmanager
    def during(self, interval_s: float = 1.0) -> Iterator[None]:
        """Sample every `interval_s` while the block runs (and once at its start)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.sample()
                stop.wait(interval_s)

        thread = threading.Thread(target=loop, name="pss-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=60)

    def result(self) -> dict[str, Any]:
        per_deployment: dict[str, dict[str, Any]] = {}
        for deployment, peak in self.replicas.values():
            row = per_deployment.setdefault(deployment, {"replicas": 0, "peak_pss_mib": 0.0, "peak_pss_all_mib": 0.0})
            row["replicas"] += 1
            row["peak_pss_mib"] = round(max(row["peak_pss_mib"], peak / MIB), 1)
            row["peak_pss_all_mib"] = round(row["peak_pss_all_mib"] + peak / MIB, 1)
        return {
            "deployments": dict(sorted(per_deployment.items())),
            # with no root, only replicas were summed: the cluster's other processes are unknown
            "cluster_peak_pss_mib": round(self.peak_sum / MIB, 1) if self.root_pid is not None else None,
            "samples": self.samples,
        }
