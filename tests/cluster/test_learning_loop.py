"""Training on a local two-node cluster. `spectrashield update --ray-address`: Ray Data extracts the features, Ray
Train runs the update on two workers, and the published version equals local mode's within float tolerance.
`spectrashield train --ray-address`: Ray Data decodes the manifest, each model trains as a two-worker TorchTrainer,
and fusion (no BatchNorm) equals local mode's within float tolerance."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cluster.local_cluster import LocalCluster, NodeSpec
from deployments.feedback import FeedbackStore
from models.bundle import load_bundle
from tests.cluster.harness import REPO, running_cluster
from tests.training.test_train import write_tiny_manifest
from training.benchmark import main as generate
from training.continual import update_main
from training.manifest import read_manifest

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One two-node cluster for the module's tests (each start costs about half a minute)."""
    with running_cluster(NodeSpec(num_cpus=2), [NodeSpec(num_cpus=2)]) as started:
        yield started


def test_update_on_a_two_node_cluster_matches_local_mode(tmp_path: Path, cluster: LocalCluster) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(REPO / "weights" / "compression_resilient" / "v2", weights / "compression_resilient" / "v2")
    bench = tmp_path / "bench"
    generate([str(bench), "--videos", "0", "--images", "30", "--audio", "0", "--seed", "5", "--no-progress"])
    store = FeedbackStore(tmp_path / "feedback")
    entries = list(read_manifest(bench / "manifest.jsonl"))
    for e in [e for e in entries if e.label == 1][:3] + [e for e in entries if e.label == 0][:1]:
        store.add(label="fake" if e.label else "real", family=e.families[0] if e.label else None,
                  data=(bench / e.path).read_bytes(), request_id="r")
    common = ["--feedback", str(tmp_path / "feedback"), "--from", "v2", "--weights-dir", str(weights),
              "--replay-manifest", str(bench / "manifest.jsonl"), "--eval-manifest", str(bench / "manifest.jsonl"),
              "--serve-config", str(REPO / "cluster" / "serve.cpu.yaml")]
    assert update_main([*common, "--version", "local", "--out-config", str(tmp_path / "local.yaml")]) == 0

    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "update", *common, "--version", "onray", "--out-config",
         str(tmp_path / "onray.yaml"), "--ray-address", cluster.gcs_address, "--ray-workers", "2"],
        cwd=REPO, env=cluster.client_env(), capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "published" in done.stdout
    local, onray = (load_file(str(weights / "compression_resilient" / v / "model.safetensors")) for v in ("local", "onray"))
    base = load_file(str(weights / "compression_resilient" / "v2" / "model.safetensors"))
    moved = max((local[k] - base[k]).abs().max().item() for k in local)
    assert moved > 1e-3  # the update did learn something
    for k in local:
        assert torch.allclose(local[k], onray[k], atol=1e-4), k
    assert not list((weights / "compression_resilient").glob(".*.work"))  # nothing left behind


def test_train_on_a_two_node_cluster_matches_local_mode(tmp_path: Path, cluster: LocalCluster) -> None:
    weights = tmp_path / "weights"
    branches = {"fast_triage": "v2", "compression_resilient": "v2", "av_alignment": "v3"}
    for name, version in branches.items():
        shutil.copytree(REPO / "weights" / name / version, weights / name / version)
    manifest = write_tiny_manifest(tmp_path / "tiny")
    pinned = ",".join(f"{n}={v}" for n, v in branches.items())

    def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "training.cli", "train", *args, "--manifest", str(manifest), "--weights-dir",
             str(weights), "--preset", "test", "--no-progress"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    # Local mode with one thread, as each Ray Train worker runs: the thread count alone moves these weights by
    # about 1e-3 (Adam turns float-order noise in near-zero gradients into steps; measured 1.1e-3 for 1 vs 2).
    train("fusion", "--version", "local", "--branch-version", pinned, env={**os.environ, "OMP_NUM_THREADS": "1"})
    on_ray = ["--ray-address", cluster.gcs_address, "--ray-workers", "2"]
    for done in (
        train("fusion", "--version", "onray", "--branch-version", pinned, *on_ray, env=cluster.client_env()),
        train("fast_triage", "--version", "onray", *on_ray, env=cluster.client_env()),
    ):  # train_on_ray checks the world size its workers report against --ray-workers
        assert "on 2 Ray Train workers" in done.stderr, done.stderr[-3000:]
    local, onray = (load_file(str(weights / "fusion" / v / "model.safetensors")) for v in ("local", "onray"))
    apart = max((local[k] - onray[k]).abs().max().item() for k in local)
    assert apart < 2e-3, apart  # seen: 3e-4, with weights up to 20 in size
    for name in ("fusion", "fast_triage"):  # loads strictly, checksums verified, and says how it was made
        bundle = load_bundle(weights / name / "onray")
        assert bundle.trained
        assert "--ray-address" in (weights / name / "onray" / "card.md").read_text()
