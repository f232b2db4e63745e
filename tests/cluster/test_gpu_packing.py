"""serve.gpu.yaml's promise, on logical GPUs: one replica of every model shares one GPU; more spill to the next.

Two worker nodes declare one logical GPU each (no CUDA here: the models fall back to CPU,
as they are written to). The cluster runs Serve's PACK scheduling, as cluster/ray-cluster.yaml
and cluster/rayservice.yaml configure it: under the default SPREAD the model replicas are
scattered over both GPU nodes, and the fractional shares pack nothing. GPU ids are what each
replica itself reports (`placement.gpu_ids` in `/v1/models`, which asks one replica per
deployment per call, so calls are repeated until every replica has answered); the replica
list comes from Serve's own view of the app.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import httpx
import pytest

from cluster.local_cluster import LocalCluster, NodeSpec, free_ports
from tests.cluster.harness import (
    MODEL_DEPLOYMENTS,
    Dashboard,
    deployment,
    deployments,
    localize,
    profile,
    readyz,
    replicas_per_node,
    running_cluster,
    serve_deploy,
    targets,
    wait_for,
)

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 420
SAMPLE_TIMEOUT_S = 120
SCALED_AV = 4  # 4 x 0.3 GPU: more than the 0.35 left beside one replica of each model
GPU_SHARE = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in deployments(profile("serve.gpu.yaml"))}

Gpu = tuple[str, str]  # (node id, GPU id on that node): one physical device


def _config(port: int, cluster: LocalCluster, av_replicas: int | None = None) -> tuple[dict, dict[str, int]]:
    config = localize(profile("serve.gpu.yaml"), port, cluster)
    if av_replicas is not None:
        scaling = deployment(config, "AVAlignment")["autoscaling_config"]
        scaling.update(min_replicas=av_replicas, max_replicas=max(av_replicas, scaling["max_replicas"]))
    return config, targets(config)


def _gpus_by_replica(url: str, dash: Dashboard) -> dict[str, tuple[str, Gpu]]:
    """replica id -> (deployment, GPU) for every running model replica, as the replicas report it."""
    expected = {r.replica_id for r in dash.replicas() if r.deployment in MODEL_DEPLOYMENTS}
    seen: dict[str, tuple[str, Gpu]] = {}

    def sample() -> bool:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["deployments"]
        for name in MODEL_DEPLOYMENTS:
            p = models[name]["model"]["placement"]
            assert len(p["gpu_ids"]) == 1, f"{name} replica {p['replica_id']} sees GPUs {p['gpu_ids']}"
            seen[p["replica_id"]] = (name, (p["node_id"], p["gpu_ids"][0]))
        return expected <= set(seen)

    wait_for(sample, SAMPLE_TIMEOUT_S, f"every model replica to report its GPU ({len(expected)} replicas)", 0.2)
    return {rid: seen[rid] for rid in expected}


def _load(placed: dict[str, tuple[str, Gpu]]) -> dict[Gpu, float]:
    """Share of each GPU the replicas on it asked for."""
    load: dict[Gpu, float] = defaultdict(float)
    for name, gpu in placed.values():
        load[gpu] += GPU_SHARE[name]
    return dict(load)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    gpu_node = NodeSpec(num_cpus=8, num_gpus=1)
    with running_cluster(
        NodeSpec(num_cpus=4), [gpu_node, gpu_node], extra_env={"RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY": "1"},
    ) as c:
        yield c


def test_models_share_one_gpu_and_extra_replicas_spill_to_the_next(cluster: LocalCluster) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    dash = Dashboard(cluster)
    config, target = _config(port, cluster)
    serve_deploy(cluster, config)
    wait_for(lambda: dash.settled(target) and readyz(url) == 200, READY_TIMEOUT_S, "the GPU profile to be ready")

    packed = _gpus_by_replica(url, dash)
    gpus = {gpu for _, gpu in packed.values()}
    assert sorted(name for name, _ in packed.values()) == sorted(MODEL_DEPLOYMENTS)
    assert len(gpus) == 1, f"one replica of each model spread over GPUs {packed}; {replicas_per_node(dash.replicas())}"
    (first,) = gpus

    config, target = _config(port, cluster, SCALED_AV)
    serve_deploy(cluster, config)
    wait_for(lambda: dash.settled(target) and readyz(url) == 200, READY_TIMEOUT_S, f"{SCALED_AV} AVAlignment replicas")

    scaled = _gpus_by_replica(url, dash)
    load = _load(scaled)
    shares = {f"{node[:8]}/gpu{gpu}": round(share, 2) for (node, gpu), share in load.items()}
    print(f"\nGPU shares after scaling AVAlignment to {SCALED_AV}: {shares}")
    assert all(share <= 1.0 + 1e-9 for share in load.values()), load
    assert all(scaled.get(rid) == packed[rid] for rid in packed), "scaling AVAlignment moved or restarted replicas"
    av_gpus = {gpu for name, gpu in scaled.values() if name == "AVAlignment"}
    assert len(av_gpus) == 2 and first in av_gpus, f"AVAlignment replicas did not spill onto a second GPU: {scaled}"
    assert 1.0 - load[first] < GPU_SHARE["AVAlignment"], f"spilled while the first GPU still had room: {load}"
