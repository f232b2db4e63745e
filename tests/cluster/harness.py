"""Shared pieces of the multi-node tests: a local cluster, `serve deploy` to it, and reading placement.

Every test here runs the real application (`graph:build_app`) on a cluster started by
`cluster.local_cluster`, so what is checked is what an operator's `serve deploy` would get.
The test process never joins the cluster as a driver: Ray fixes a process's auth mode when
it is first imported, so status and placement are read over the dashboard's REST API (the
one `serve status` and `ray list actors` use) with the cluster's token. Every wait has a
deadline, and the cluster is torn down even when a test fails.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from cluster.local_cluster import LocalCluster, NodeSpec, start_cluster

REPO = Path(__file__).resolve().parents[2]
APP = "spectrashield"
MODEL_DEPLOYMENTS = ("FastTriage", "CompressionResilient", "AVAlignment", "Fusion")
DEPLOY_TIMEOUT_S = 120
T = TypeVar("T")


def profile(name: str) -> dict:
    """A Serve config from cluster/ as a plain dict, to derive test configs from."""
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def deployments(config: dict) -> list[dict]:
    """The deployment entries of the config's only application."""
    return config["applications"][0]["deployments"]


def deployment(config: dict, name: str) -> dict:
    return next(d for d in deployments(config) if d["name"] == name)


def localize(config: dict, port: int, cluster: LocalCluster, request_timeout_s: float = 60) -> dict:
    """The same config served on one machine: one proxy on the head, bound to loopback on `port`.

    `EveryNode` would start a proxy per node, and on one machine they would all bind one port.
    JobQueue's state goes into the cluster's own directory, which `stop` deletes. The Gatekeeper runs
    without the profile's key database, as a loopback service may.
    """
    config = copy.deepcopy(config)
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host="127.0.0.1", port=port, request_timeout_s=request_timeout_s)
    for d in deployments(config):
        if d["name"] == "JobQueue":
            d.setdefault("user_config", {})["jobs_dir"] = str(Path(cluster.root) / "jobs")
        if d["name"] == "Gatekeeper":  # loopback now: open, as `make serve` is (the profiles' key file is not here)
            d.setdefault("user_config", {}).pop("keys_db", None)
        if d["name"] == "Ingress":  # the API answers a stuck analysis before the proxy does
            d.setdefault("user_config", {})["analysis_timeout_s"] = max(request_timeout_s - 10, request_timeout_s / 2)
    return config


def replica_target(d: dict) -> int:
    """How many replicas a deployment entry starts with: its autoscaling minimum, else num_replicas."""
    if isinstance(d.get("autoscaling_config"), dict):
        return int(d["autoscaling_config"]["min_replicas"])
    return int(d.get("num_replicas", 1))


def fix_replicas(d: dict, n: int) -> None:
    """Pin a deployment entry to exactly `n` replicas, autoscaled or not."""
    if isinstance(d.get("autoscaling_config"), dict):
        d["autoscaling_config"].update(min_replicas=n, max_replicas=n)
    else:
        d["num_replicas"] = n


def targets(config: dict) -> dict[str, int]:
    return {d["name"]: replica_target(d) for d in deployments(config)}


@contextmanager
def running_cluster(
    head: NodeSpec, workers: list[NodeSpec], extra_env: dict[str, str] | None = None,
) -> Iterator[LocalCluster]:
    """A fresh local cluster in a short private temp dir, stopped (every process killed) on exit."""
    root = Path(tempfile.mkdtemp(prefix="ssc-"))
    cluster = start_cluster(head, workers, root=root, extra_env=extra_env, die_with_parent=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def serve_deploy(cluster: LocalCluster, config: dict) -> None:
    """`serve deploy` a config to the cluster's dashboard, exactly as an operator would."""
    path = Path(cluster.root) / f"serve-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("serve")), "deploy", str(path), "--address", cluster.dashboard_url],
        cwd=REPO, env=cluster.client_env(), capture_output=True, text=True, timeout=DEPLOY_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 1.0) -> T:
    """Poll `check` until it returns something truthy; fail the test with `what` and the last value if it never does."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # a restarting proxy or controller answers oddly
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}"[:4000])
        time.sleep(interval_s)


def readyz(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=30).status_code


@dataclass(frozen=True)
class Replica:
    deployment: str
    replica_id: str
    state: str
    node_id: str
    node_name: str


class Dashboard:
    """The cluster's dashboard REST API: Serve's view of the app and the state API's nodes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def _get(self, path: str) -> Any:
        r = httpx.get(f"{self.cluster.dashboard_url}{path}", headers=self.cluster.auth_headers(), timeout=30)
        r.raise_for_status()
        return r.json()

    def app(self) -> dict | None:
        """`serve status` in JSON: the app's status and each deployment's status and replicas."""
        return self._get("/api/serve/applications/").get("applications", {}).get(APP)

    def nodes(self) -> list[dict]:
        return self._get("/api/v0/nodes?limit=1000")["data"]["result"]["result"]

    def node_names(self) -> dict[str, str]:
        return {n["node_id"]: n["node_name"] for n in self.nodes()}

    def alive_node_names(self) -> set[str]:
        return {n["node_name"] for n in self.nodes() if n["state"] == "ALIVE"}

    def replicas(self, states: tuple[str, ...] = ("RUNNING",)) -> list[Replica]:
        """The app's replicas in `states` with the node each runs on."""
        app, names = self.app() or {}, self.node_names()
        return [
            Replica(name, r["replica_id"], r["state"], r.get("node_id", ""), names.get(r.get("node_id", ""), "?"))
            for name, d in app.get("deployments", {}).items()
            for r in d["replicas"]
            if r["state"] in states
        ]

    def running(self) -> dict[str, int]:
        """RUNNING replicas per deployment."""
        return dict(Counter(r.deployment for r in self.replicas()))

    def settled(self, targets: dict[str, int]) -> bool:
        """The app is RUNNING and every deployment is HEALTHY with exactly its target of replicas, all RUNNING.

        A deployment that failed to start fails the test at once, with Serve's reason.
        """
        app = self.app()
        if app is not None and app["status"] == "DEPLOY_FAILED":
            failed = {n: d["message"][-1500:] for n, d in app["deployments"].items() if d["status"] == "DEPLOY_FAILED"}
            pytest.fail(f"deploy failed: {app['message'][:500]}\n{failed}")
        if app is None or app["status"] != "RUNNING":
            return False
        for name, target in targets.items():
            d = app["deployments"].get(name)
            if d is None or d["status"] != "HEALTHY" or [r["state"] for r in d["replicas"]] != ["RUNNING"] * target:
                return False
        return True


def controller_log(cluster: LocalCluster, needle: str) -> list[str]:
    """Lines of the Serve controller's log that mention `needle`: why it scaled, restarted or gave up."""
    lines: list[str] = []
    for log in sorted(Path(cluster.root).glob("ray/session_*/logs/serve/controller_*.log")):
        lines += [line for line in log.read_text(errors="replace").splitlines() if needle in line]
    return lines


def ray_errors_in_serve_logs(cluster: LocalCluster, pattern: str = "*") -> Counter:
    """Distinct log lines naming a `ray.exceptions.*` error in the Serve logs matching `pattern`, counted."""
    found: Counter = Counter()
    for log in Path(cluster.root).glob(f"ray/session_*/logs/serve/{pattern}.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "ray.exceptions." in line:
                found[re.sub(r"\s+", " ", line.strip())[:240]] += 1
    return found


def replicas_per_node(found: list[Replica]) -> dict[str, dict[str, int]]:
    """node name -> deployment -> replica count: the placement table a failing assertion prints."""
    table: dict[str, Counter] = {}
    for r in found:
        table.setdefault(r.node_name, Counter())[r.deployment] += 1
    return {node: dict(c) for node, c in sorted(table.items())}
