"""`python -m bench.run` end to end, as `make bench BENCH_OPTS=--quick` runs it, on 1 s clips.

Nothing else runs the benchmark whole: this starts its own `serve run` (cold start), measures
floor, in-process and served latency, throughput at concurrency 1 and 4, and memory for four
small workloads, and writes the JSON and the page outside the repository. It asserts what was
measured and written, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import render

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = ["video_720p", "early_exit", "audio", "image_1024"]
DEPLOYMENTS = ["Ingress", "MediaDecoder", "FastTriage", "KeyframeSelector", "CompressionResilient",
               "AVAlignment", "Fusion", "JobQueue"]


def _repo_outputs() -> dict[str, float]:
    """What a benchmark writes by default: BENCHMARKS.md and bench/results/*, with their mtimes."""
    paths = [REPO / "BENCHMARKS.md", *sorted((REPO / "bench" / "results").glob("*"))]
    return {str(p): p.stat().st_mtime for p in paths if p.exists()}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    before = _repo_outputs()
    command = [
        sys.executable, "-m", "bench.run", "--quick", "--video-seconds", "1",
        "--workloads", *WORKLOADS, "--concurrency", "1", "4",
        "--out", str(out / "results"), "--markdown", str(out / "BENCHMARKS.md"), "--cache-dir", str(out / "media"),
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _repo_outputs() == before, "the benchmark wrote into the repository despite --out/--markdown"
    (path,) = sorted((out / "results").glob("*.json"))
    return json.loads(path.read_text()), (out / "BENCHMARKS.md").read_text(), path


def test_every_workload_is_measured_in_process_and_served_at_each_level(quick_run) -> None:
    result, _, _ = quick_run
    assert result["served_error"] is None
    assert set(result["workloads"]) == set(WORKLOADS)
    for name, w in result["workloads"].items():
        floor, in_process = w["floor"], w["in_process"]
        assert floor["total_ms"] == pytest.approx(floor["decode_ms"] + sum(floor["forward_ms"].values()))
        assert in_process["runs"] == 2 and "total" in in_process["stage_mean_ms"]
        levels = w["served"]["levels"]
        assert [level["concurrency"] for level in levels] == [1, 4]
        for level in levels:
            assert level["ok"] == level["requests"] == 2 * level["concurrency"] and level["errors"] == [], (name, level)
            assert level["clips_per_min"] > 0 and "total" in level["timings_ms_mean"]
    forwards = {name: set(w["floor"]["forward_ms"]) for name, w in result["workloads"].items()}
    assert forwards == {"video_720p": {"triage", "visual", "av", "fusion"}, "early_exit": {"triage"},
                        "audio": {"av", "fusion"}, "image_1024": {"visual", "fusion"}}


def test_the_early_exit_workload_exits_early_served_and_restores_triage(quick_run) -> None:
    result, _, _ = quick_run
    early, normal = result["workloads"]["early_exit"], result["workloads"]["video_720p"]
    assert early["in_process"]["early_exit"] is True and normal["in_process"]["early_exit"] is False
    served = early["served"]
    assert served["overrides_applied"] is True and served["restored"] is True
    assert all(level["early_exits"] == level["ok"] for level in served["levels"])
    assert all(level["early_exits"] == 0 for level in normal["served"]["levels"])
    assert normal["inputs"]["keyframes"] and early["inputs"]["keyframes"] is None


def test_memory_cold_start_and_targets_are_recorded(quick_run) -> None:
    result, _, _ = quick_run
    assert result["cold_start_s"] > 0
    memory = result["memory"]
    assert set(DEPLOYMENTS) <= set(memory["deployments"])
    peaks = [memory["deployments"][name]["peak_pss_mib"] for name in DEPLOYMENTS]
    assert all(peak > 0 for peak in peaks)
    assert memory["cluster_peak_pss_mib"] >= max(peaks)
    assert len(result["targets"]) == 6 and all(isinstance(t["met"], bool) for t in result["targets"])


def test_the_page_is_the_rendering_of_the_result_and_names_the_command(quick_run) -> None:
    result, markdown, path = quick_run
    assert markdown == render(result, str(path))
    assert "--video-seconds 1" in markdown and "## Targets (issue 5)" in markdown
    for name in WORKLOADS:
        assert f"| `{name}` |" in markdown
