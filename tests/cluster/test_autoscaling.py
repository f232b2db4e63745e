"""Per-deployment autoscaling: the loaded model scales out and back in, the idle one stays put.

The claim DESIGN.md makes ("each model is its own deployment, scaled on its own") is only
true if load on one deployment moves that deployment alone. FastTriage is loaded directly
through a handle from a separate driver (`tests.cluster.handle_load`), so no other
deployment sees a request; CompressionResilient gets the same short autoscaling settings
and no load, and must never leave its minimum. Delays are seconds here instead of the
profile's minutes so the whole cycle fits a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from cluster.local_cluster import LocalCluster, NodeSpec, free_ports
from tests.cluster.harness import (
    REPO,
    Dashboard,
    controller_log,
    deployment,
    localize,
    profile,
    readyz,
    running_cluster,
    serve_deploy,
    targets,
    wait_for,
)

pytestmark = pytest.mark.cluster

LOADED, IDLE = "FastTriage", "CompressionResilient"
MAX_REPLICAS = 3
# Seconds, not the profile's minutes; the look-back and downscale delay still span several metric
# reports, so a driver starved of CPU for a moment (two shared cores) does not read as "no load".
FAST_AUTOSCALING = {
    "min_replicas": 1, "max_replicas": MAX_REPLICAS, "target_ongoing_requests": 1,
    "upscale_delay_s": 1, "downscale_delay_s": 8, "metrics_interval_s": 1, "look_back_period_s": 5,
}
CONCURRENCY = 12  # in flight against FastTriage: 12x its target per replica, so the policy asks for the maximum
READY_TIMEOUT_S = 420
SCALE_TIMEOUT_S = 180  # a new replica imports torch and loads weights: tens of seconds on two shared cores


def _config(port: int, cluster: LocalCluster) -> dict:
    config = localize(profile("serve.cpu.yaml"), port, cluster)
    for name in (LOADED, IDLE):
        deployment(config, name)["autoscaling_config"] = dict(FAST_AUTOSCALING)
    return config


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # One node is enough for autoscaling; 8 logical CPUs leave room for the extra replicas.
    with running_cluster(NodeSpec(num_cpus=8), []) as c:
        yield c


def test_loaded_deployment_scales_out_and_back_in_while_idle_one_stays(cluster: LocalCluster) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    dash = Dashboard(cluster)
    config = _config(port, cluster)
    serve_deploy(cluster, config)
    minimum = targets(config)
    wait_for(lambda: dash.settled(minimum) and readyz(url) == 200, READY_TIMEOUT_S, "the app at its minimum")

    history: list[tuple[float, dict[str, int]]] = []

    def observe() -> dict[str, int]:
        running = dash.running()
        history.append((time.monotonic(), running))
        return running

    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.handle_load", "--deployment", LOADED,
         "--seconds", str(3 * SCALE_TIMEOUT_S), "--concurrency", str(CONCURRENCY)],  # a cap: stdin EOF stops it
        cwd=REPO, env=cluster.client_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        wait_for(lambda: observe().get(LOADED, 0) >= 2, SCALE_TIMEOUT_S, f"{LOADED} to scale out under load")
        scaled_out_s = time.monotonic() - started
        wait_for(lambda: observe().get(LOADED, 0) == MAX_REPLICAS, SCALE_TIMEOUT_S, f"{LOADED} to reach max_replicas")
        during_load = len(history)
        out, err = driver.communicate(input="", timeout=120)  # EOF on stdin stops the load
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, err[-3000:]
    outcomes = json.loads(out.strip().splitlines()[-1])
    stopped = time.monotonic()

    wait_for(lambda: observe().get(LOADED, 0) == 1 and dash.settled(minimum), SCALE_TIMEOUT_S, f"{LOADED} back to 1")
    scaled_in_s = time.monotonic() - stopped
    seen = [running.get(LOADED, 0) for _, running in history]
    print(
        f"\n{LOADED}: {outcomes} in {stopped - started:.0f}s; >=2 replicas after {scaled_out_s:.1f}s, "
        f"back to 1 {scaled_in_s:.1f}s after the load stopped; RUNNING replicas polled: {seen}"
    )

    assert set(outcomes) == {"ok"}, outcomes
    first_up = next(i for i, n in enumerate(seen) if n >= 2)
    assert max(seen) == MAX_REPLICAS and 1 not in seen[first_up:during_load], (
        f"dropped back under load: {seen}\n" + "\n".join(controller_log(cluster, LOADED)[-40:])
    )
    for _, running in history:
        others = {name: n for name, n in running.items() if name != LOADED}
        assert all(n <= minimum[name] for name, n in others.items()), f"an unloaded deployment scaled: {running}"
    assert readyz(url) == 200
