"""How a replica's process is tuned: declared in the Serve profiles as `runtime_env` env vars, not set by code.

FastTriage and CompressionResilient keep freed working memory for the next request instead of
faulting it in again. Deployments compute on worker threads (`asyncio.to_thread`). Left to
itself, glibc's malloc maps every block over a dynamic threshold (128 KiB at first, at most
32 MiB) afresh and hands an arena's free top back to the OS once it exceeds twice that, so each
request paid for its working memory in page faults again (measured in the FastTriage replica:
8,300 faults per call, its forward pass twice as slow). glibc reads fixed thresholds from
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ at start; the profiles set them for those two
replicas. OpenCV's pool (KeyframeSelector) and torch's intra-op threads (every model replica)
are sized to one thread by OPENCV_FOR_THREADS_NUM and OMP_NUM_THREADS. Each probe runs in a fresh
interpreter with the environment a replica gets.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILES = ("serve.cpu.yaml", "serve.gpu.yaml")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

# A request's working memory as many mid-sized blocks (150 of 0.1-0.5 MB, ~45 MB, as a forward
# pass allocates its activations), allocated, filled and freed on a worker thread three times.
# Prints the most memory (MiB) that freeing handed back to the OS in rounds 2-3: what the next
# request then has to fault in again.
PROBE = """
import os, threading
import numpy as np
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
def work(out):
    rng = np.random.default_rng(0)
    for _ in range(3):
        blocks = [np.ones(int(size), np.uint8) for size in rng.uniform(0.1e6, 0.5e6, 150)]
        held = rss()
        del blocks
        out.append((held - rss()) >> 20)
out = []
t = threading.Thread(target=work, args=(out,))
t.start(); t.join()
print(max(out[1:]))
"""



def _env_vars(profile: str) -> dict[str, dict[str, str]]:
    config = yaml.safe_load((REPO / "cluster" / profile).read_text())
    return {
        d["name"]: ((d.get("ray_actor_options") or {}).get("runtime_env") or {}).get("env_vars") or {}
        for d in config["applications"][0]["deployments"]
    }


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_without_fixed_thresholds_freed_memory_goes_back_each_request() -> None:
    """The probe tells the two apart in a bare interpreter, where glibc's dynamic thresholds are low."""
    assert int(_run(PROBE, {})) > 16


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("deployment", ["FastTriage", "CompressionResilient"])
def test_the_profiles_keep_freed_memory_in_the_computing_replicas(profile: str, deployment: str) -> None:
    env = _env_vars(profile)[deployment]
    assert int(_run(PROBE, env)) < 4


@pytest.mark.parametrize("profile", PROFILES)
def test_the_profiles_size_opencv_and_torch_threads(profile: str) -> None:
    env = _env_vars(profile)
    assert _run("import cv2; print(cv2.getNumThreads())", env["KeyframeSelector"]) == "1"
    for deployment in ("FastTriage", "CompressionResilient", "AVAlignment", "Fusion"):
        assert env[deployment].get("OMP_NUM_THREADS") == "1", deployment
    assert _run("import torch; print(torch.get_num_threads())", env["Fusion"]) == "1"
