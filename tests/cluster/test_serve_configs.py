"""The Serve configs in cluster/ validate against Serve's own schema and match the graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from deployments.job_worker import JobWorkerConfig
from deployments.jobs import JobsConfig
from deployments.keys import GatekeeperConfig
from graph import GraphArgs, build_app
from pipeline.table import MODEL_BUNDLES, STAGES

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
USER_CONFIGS = {
    **{stage.deployment: stage.user_config for stage in STAGES}, "JobQueue": JobsConfig, "JobWorker": JobWorkerConfig,
    "Gatekeeper": GatekeeperConfig,
}
MODEL_DEPLOYMENTS = tuple(MODEL_BUNDLES)
SINGLE_REPLICA = ("JobQueue", "JobWorker", "Gatekeeper")


def _load(name: str) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load((CLUSTER / name).read_text()))


def _graph_deployment_names() -> set[str]:
    names, todo = set(), [build_app(GraphArgs())]
    while todo:
        deployment = todo.pop()._bound_deployment
        names.add(deployment.name)
        todo.extend(a for a in deployment.init_args if isinstance(a, Application))
    return names


@pytest.mark.parametrize("profile", ["serve.cpu.yaml", "serve.gpu.yaml"])
def test_profile_validates_and_names_every_graph_deployment(profile: str) -> None:
    (app,) = _load(profile).applications
    assert app.import_path == "graph:build_app"
    GraphArgs.model_validate(app.args)
    names = {d.name for d in app.deployments}
    assert names == _graph_deployment_names() == set(USER_CONFIGS)
    for d in app.deployments:
        USER_CONFIGS[d.name].model_validate(d.user_config)  # a typo in a user_config fails here, not at deploy
        if d.name in SINGLE_REPLICA:  # the job state's owner, and the worker: fixed replica counts
            assert d.num_replicas == 1 and not isinstance(d.autoscaling_config, dict)
            continue
        assert d.autoscaling_config["min_replicas"] >= 1
        assert d.autoscaling_config["max_replicas"] >= d.autoscaling_config["min_replicas"]


@pytest.mark.parametrize("profile", ["serve.cpu.yaml", "serve.gpu.yaml"])
def test_the_api_answers_a_stuck_analysis_before_the_proxy_cuts_it(profile: str) -> None:
    config = _load(profile)
    (ingress,) = [d for d in config.applications[0].deployments if d.name == "Ingress"]
    assert USER_CONFIGS["Ingress"].model_validate(ingress.user_config).analysis_timeout_s < config.http_options.request_timeout_s


def test_cpu_profile_fits_two_cores_and_listens_on_loopback() -> None:
    config = _load("serve.cpu.yaml")
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    (app,) = config.applications
    cpus = sum(
        d.ray_actor_options.num_cpus * (d.autoscaling_config["min_replicas"] if isinstance(d.autoscaling_config, dict) else d.num_replicas)
        for d in app.deployments
    )
    assert cpus <= 2.0
    assert all(not d.ray_actor_options.num_gpus for d in app.deployments)


def test_gpu_profile_packs_one_replica_of_every_model_onto_one_gpu() -> None:
    (app,) = _load("serve.gpu.yaml").applications
    gpus = {d.name: d.ray_actor_options.num_gpus or 0 for d in app.deployments}
    assert all(0 < gpus[name] < 1 for name in MODEL_DEPLOYMENTS)
    assert sum(gpus[name] for name in MODEL_DEPLOYMENTS) <= 1.0
    assert gpus["MediaDecoder"] == 0 and gpus["KeyframeSelector"] == 0


def test_graph_defaults_fit_two_cores() -> None:
    """`serve run graph:app` (no YAML) places one replica of everything on the 2-core machine."""
    names, todo, cpus = set(), [build_app(GraphArgs())], 0.0
    while todo:
        deployment = todo.pop()._bound_deployment
        if deployment.name not in names:
            names.add(deployment.name)
            cpus += deployment.ray_actor_options.get("num_cpus", 1)
        todo.extend(a for a in deployment.init_args if isinstance(a, Application))
    assert cpus <= 2.0
