"""cluster/ray-cluster.yaml is a config `ray up` accepts, and it starts Ray the way the Serve profiles need."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "ray-cluster.yaml"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_ray_up_accepts_the_config() -> None:
    validate_config(prepare_config(_config()))  # Ray's own schema, after `ray up` fills its provider defaults


def test_every_node_runs_token_auth_and_the_head_packs_gpus() -> None:
    config = _config()
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1" in head  # the controller runs on the head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node


def test_the_repo_is_mounted_and_installed_on_every_node() -> None:
    config = _config()
    (remote,) = [r for r, local in config["file_mounts"].items() if local == "."]
    assert any(f"-e {remote}" in c for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]
    gpu = config["available_node_types"]["gpu_worker"]
    assert 1 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
