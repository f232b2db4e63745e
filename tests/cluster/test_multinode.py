"""The real app on a head + 2 workers: replicas spread over nodes, and a worker dying under load.

What an operator relies on when a machine disappears: every request that was accepted gets
an HTTP answer within its timeout, never a dropped connection or a hang; the controller
replaces the lost replicas on the surviving nodes; `/readyz` is 200 again; and requests after
that succeed. The only MediaDecoder replica is kept off the head (a custom resource only the
workers declare) and its worker is the one killed, so requests are certainly in the middle
of decoding on the dying node. The ingress re-runs such a request once (every stage is a pure
function of the upload); what is still lost is answered with the API's JSON 503 and only while
the node is down (or the API's JSON 504 if it hangs past the ingress's analysis_timeout_s) —
unless the Ingress replica handling it was on the dead node, in which case Serve's proxy answers
a 500, or 408 at its request timeout, in the API's JSON. Every outcome is printed (`-s`).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from cluster.local_cluster import LocalCluster, NodeSpec, free_ports
from tests.cluster.harness import (
    Dashboard,
    deployment,
    deployments,
    fix_replicas,
    localize,
    profile,
    ray_errors_in_serve_logs,
    readyz,
    replicas_per_node,
    running_cluster,
    serve_deploy,
    targets,
    wait_for,
)
from tests.mediagen import talking_face_video

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 420  # every deployment of the graph importing torch on two shared cores
RECOVERY_TIMEOUT_S = 240
CLIENT_TIMEOUT_S = 90.0  # above the proxy's request_timeout_s, so a stuck request is answered by Serve, not cut by us
SERVE_REQUEST_TIMEOUT_S = 60
LOAD_THREADS = 4  # more than the decoder's max_ongoing_requests (1): it is always busy when its node dies
SPREAD = {"Ingress": 2, "FastTriage": 2}  # Serve's SPREAD scheduling puts each pair on two nodes
WORKER_ONLY = "worker_node"  # custom resource of the workers: pins the single MediaDecoder replica to one of them


def _config(port: int, cluster: LocalCluster) -> tuple[dict, dict[str, int]]:
    """serve.cpu.yaml on the local cluster with fixed replica counts, so "back to target" is well defined."""
    config = localize(profile("serve.cpu.yaml"), port, cluster, SERVE_REQUEST_TIMEOUT_S)
    for d in deployments(config):
        fix_replicas(d, SPREAD.get(d["name"], 1))
    deployment(config, "MediaDecoder")["ray_actor_options"]["resources"] = {WORKER_ONLY: 0.01}
    return config, targets(config)


@dataclass
class Outcome:
    """One request of the load: when it ran and what came back (`status` None = no HTTP answer)."""

    started: float
    ended: float
    status: int | None
    body: str

    def healthy(self) -> bool:
        """A 200 in which every branch that ran succeeded."""
        return self.status == 200 and _summary(self.body) == "ok"


class SteadyLoad:
    """`threads` clients posting the clip back to back until stopped; every outcome is kept."""

    def __init__(self, url: str, clip: bytes, threads: int) -> None:
        self.url, self.clip = url, clip
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post("/v1/analyze", files={"file": ("clip.mp4", self.clip)})
                    status, body = r.status_code, r.text
                except httpx.HTTPError as exc:
                    status, body = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append(Outcome(started, time.monotonic(), status, body))

    def ok_count(self) -> int:
        with self._lock:
            return sum(o.status == 200 for o in self.outcomes)

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 10)


def _summary(body: str) -> str:
    """`ok`, `degraded: <failed branches>` for a 200, the error name and detail of a JSON error, else the raw body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:120]
    if not isinstance(data, dict):
        return body[:120]
    if "error" in data:
        return f"{data['error']}: {str(data.get('detail'))[:160]}"
    failed = [name for name, m in data.get("modalities", {}).items() if m.get("status") == "failed"]
    return f"degraded: {', '.join(failed)} failed" if failed else "ok"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    worker = NodeSpec(num_cpus=4, resources={WORKER_ONLY: 1})
    with running_cluster(NodeSpec(num_cpus=4), [worker, worker]) as c:
        yield c


def test_replicas_spread_and_survive_losing_a_worker_under_load(cluster: LocalCluster) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    config, target = _config(port, cluster)
    clip = talking_face_video(seconds=2.0, size=(320, 240))
    dash = Dashboard(cluster)
    serve_deploy(cluster, config)
    wait_for(lambda: dash.settled(target) and readyz(url) == 200, READY_TIMEOUT_S, "the app to be ready")

    placed = dash.replicas()
    table = replicas_per_node(placed)
    assert Counter(r.deployment for r in placed) == Counter(target), table
    assert len(table) >= 2, f"every replica on one node: {table}"
    for name, n in SPREAD.items():
        assert len({r.node_name for r in placed if r.deployment == name}) == n, f"{name} not spread: {table}"
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as c:
        models = c.get("/v1/models").json()["deployments"]
    answered = {m["model"]["placement"]["node_id"] for m in models.values() if m.get("model")}
    assert answered and answered <= {r.node_id for r in placed}, models  # /v1/models agrees with Serve's placement

    (victim,) = [n for n in cluster.workers if "MediaDecoder" in table.get(n.name, {})]
    lost = table[victim.name]

    with SteadyLoad(url, clip, LOAD_THREADS) as load:
        wait_for(lambda: load.ok_count() >= 2 * LOAD_THREADS, READY_TIMEOUT_S, "load to flow before the kill")
        killed_at = time.monotonic()
        cluster.kill_node(victim.name)
        wait_for(lambda: victim.name not in dash.alive_node_names(), RECOVERY_TIMEOUT_S, "the node to be marked dead")
        dead_at = time.monotonic()
        wait_for(
            lambda: dash.settled(target) and readyz(url) == 200, RECOVERY_TIMEOUT_S,
            "replicas to be replaced on the surviving nodes",
        )
        recovered_at = time.monotonic()
        after = load.ok_count()
        wait_for(lambda: load.ok_count() >= after + 2 * LOAD_THREADS, RECOVERY_TIMEOUT_S, "load to flow after recovery")

    outcomes = sorted(load.outcomes, key=lambda o: o.started)
    report = Counter((o.status, _summary(o.body)) for o in outcomes if (o.status, _summary(o.body)) != (200, "ok"))
    print(
        f"\nkilled {victim.name} holding {lost}; marked dead after {dead_at - killed_at:.1f}s, "
        f"app back to target after {recovered_at - killed_at:.1f}s; {len(outcomes)} requests, "
        f"{sum(o.status == 200 for o in outcomes)} x 200; others: {dict(report)}"
    )
    for source in ("proxy*", "*Ingress*"):
        for line, n in ray_errors_in_serve_logs(cluster, source).items():
            print(f"  {source} log, {n}x: {line}")
    for o in outcomes:
        print(f"  t={o.started - killed_at:+7.1f}s..{o.ended - killed_at:+7.1f}s  {o.status}  {_summary(o.body)[:100]}")

    no_answer = [o for o in outcomes if o.status is None]
    assert not no_answer, f"requests without an HTTP answer: {[o.body for o in no_answer]}"
    failed = [o for o in outcomes if o.status != 200]
    assert all(killed_at - CLIENT_TIMEOUT_S < o.started < recovered_at for o in failed), failed
    # In-flight work on the dead node is re-run by the ingress; whatever still fails says so in API JSON
    # (503 lost twice, or 504 when the analysis hung past the ingress's analysis_timeout_s), except a
    # request whose Ingress replica itself died: nothing of ours is left to answer it, and Serve's proxy
    # answers 500, or its 408 at request_timeout_s when it never learnt of the death (CI saw one such
    # request among 26 at stop 23) -- in the API's JSON too, through the proxy callback the cluster
    # helper starts every node with (deployments/proxy_errors.py).
    ingress_died = lost.get("Ingress", 0) > 0
    codes = {503: "unavailable", 504: "timeout", 500: "internal", 408: "timeout"}

    def clear_failure(o: Outcome) -> bool:
        if o.status in (500, 408) and not ingress_died:
            return False
        return o.status in codes and json.loads(o.body)["error"] == codes[o.status]

    assert all(clear_failure(o) for o in failed), (lost, failed)
    before = [o for o in outcomes if o.ended < killed_at]
    assert before and all(o.healthy() for o in before), [(o.status, o.body[:200]) for o in before]
    later = [o for o in outcomes if o.started > recovered_at]
    assert later and all(o.healthy() for o in later), [(o.status, o.body[:200]) for o in later]

    placed = dash.replicas()
    assert Counter(r.deployment for r in placed) == Counter(target), replicas_per_node(placed)
    assert {r.node_name for r in placed} <= {n.name for n in cluster.nodes}, replicas_per_node(placed)
