"""How a replica sets up its process: OpenCV threads to its CPU share, freed memory kept.

OpenCV's pool has one actively waiting worker per core unless told otherwise; KeyframeSelector
sizes it to its CPU share as torch's replicas size torch (on this profile, one thread).

FastTriage and CompressionResilient keep freed working memory for the next request instead of
faulting it in again. Deployments compute on worker threads (`asyncio.to_thread`). Left to
itself, glibc's malloc maps every block over a dynamic threshold (128 KiB at first, at most
32 MiB) afresh and hands an arena's free top back to the OS once it exceeds twice that, so each
request paid for its working memory in page faults again (measured in the FastTriage replica:
8,300 faults per call, its forward pass twice as slow). `keep_freed_memory` fixes the thresholds;
those two replicas set them when they start. The others showed no such faults and AVAlignment
grew ~70 MiB with it, so they keep glibc's defaults. Each probe runs in a fresh interpreter: the
setting is per process, and what a process imported beforehand moves glibc's dynamic thresholds.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import common

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and per-thread rusage")

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

# deployment module -> its class: the replicas that keep freed memory
REPLICAS = {
    "deployments.triage": "FastTriageDeployment",
    "deployments.compression": "CompressionResilientDeployment",
}


def _returned_mib(setup: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", setup + "\n" + PROBE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_without_it_freed_memory_goes_back_each_request() -> None:
    """The probe tells the two apart in a bare interpreter, where glibc's dynamic thresholds are low."""
    assert _returned_mib("") > 16


def test_keep_freed_memory_keeps_it() -> None:
    assert _returned_mib("from deployments.common import keep_freed_memory\nassert keep_freed_memory()") < 4


@pytest.mark.parametrize("module", sorted(REPLICAS))
def test_each_computing_replica_keeps_freed_memory(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring only: importing torch or scikit-learn already raises glibc's dynamic thresholds in a
    fresh process, so the probe above cannot tell a replica's state apart; its constructor's call is checked."""
    m = importlib.import_module(module)
    calls: list[bool] = []
    monkeypatch.setattr(m, "keep_freed_memory", lambda: calls.append(True) or True)
    getattr(m, REPLICAS[module]).func_or_class()
    assert calls == [True]



@pytest.mark.parametrize(("share", "threads"), [(0.1, 1), (1.0, 1), (1.5, 2)])
def test_opencv_threads_follow_the_cpu_share(share: float, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    cv2 = pytest.importorskip("cv2")
    monkeypatch.setattr(common, "replica_cpu_share", lambda: share)
    before = cv2.getNumThreads()
    try:
        assert common.configure_opencv_threads() == threads
        assert cv2.getNumThreads() == threads
    finally:
        cv2.setNumThreads(before)


def test_keyframe_replica_sizes_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments import keyframes

    calls: list[bool] = []
    monkeypatch.setattr(keyframes, "configure_opencv_threads", lambda: calls.append(True) or 1)
    keyframes.KeyframeSelectorDeployment.func_or_class()
    assert calls == [True]
