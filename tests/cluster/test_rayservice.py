"""The committed KubeRay manifest carries exactly serve.gpu.yaml, so Kubernetes serves what the tests test."""

from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from cluster.make_rayservice import MANIFEST, SERVE_CONFIG, render

REGENERATE = "regenerate it: python -m cluster.make_rayservice"


def _committed() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_serve_config_v2_is_serve_gpu_yaml() -> None:
    embedded = _committed()["spec"]["serveConfigV2"]
    assert yaml.safe_load(embedded) == yaml.safe_load(SERVE_CONFIG.read_text()), f"serveConfigV2 drifted; {REGENERATE}"
    ServeDeploySchema.model_validate(yaml.safe_load(embedded))


def test_committed_manifest_is_the_generators_output() -> None:
    assert MANIFEST.read_text() == render(), f"cluster/rayservice.yaml is not the generator's output; {REGENERATE}"


def test_gpu_workers_have_a_gpu_each_and_token_auth_is_on() -> None:
    cluster = _committed()["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_group["minReplicas"] >= 1
