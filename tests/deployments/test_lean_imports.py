"""Deployments that run no model must not load torch: each replica is its own process, and torch
alone costs a replica ~400 MB of resident memory (the CPU profile's budget is 6 GiB in all)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["deployments.ingress", "deployments.decoder", "deployments.keyframes", "deployments.jobs"])
def test_modelless_deployment_does_not_import_torch(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'torchaudio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} pulls in {done.stdout.strip()}"
