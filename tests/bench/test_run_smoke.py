"""`python -m bench.run` end to end, as `make bench BENCH_OPTS=--quick` runs it, on 1 s clips.

The benchmark is issue 5's deliverable and nothing else runs it whole: this starts its own
`serve run` (cold start), measures floor, in-process and served latency, pairs, throughput at
concurrency 1 and 4 (and the in-process pipeline in 1 and 4 processes beside them), and memory
for the four small workloads, and writes the JSON and the report outside the repository. It
asserts what was measured and written, never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import render

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
    results = sorted((out / "results").glob("*.json"))
    assert len(results) == 1, results
    return json.loads(results[0].read_text()), (out / "BENCHMARKS.md").read_text(), results[0]


def test_every_workload_is_measured_in_process_served_paired_and_under_load(quick_run) -> None:
    result, _, _ = quick_run
    assert result["served_error"] is None
    assert set(result["workloads"]) == set(WORKLOADS)
    assert result["options"]["concurrency"] == [1, 4] and result["options"]["in_process_scaling"] is True
    for name, w in result["workloads"].items():
        floor, in_process, served = w["floor"], w["in_process"], w["served"]
        assert floor["total_ms"] == pytest.approx(floor["decode_faces_ms"] + sum(floor["forward_ms"].values()))
        assert in_process["runs"] == 2 and in_process["min_ms"] <= in_process["p50_ms"] <= in_process["max_ms"]
        latency = served["latency"]
        assert (latency["requests"], latency["ok"], latency["errors"]) == (3, 3, []), name
        assert len(latency["latencies_ms"]) == 3 and "total" in latency["timings_ms_mean"]
        paired = served["paired"]
        assert (paired["pairs"], paired["ok"], paired["errors"]) == (2, 2, []), name
        assert len(paired["local_ms"]["in_process"]) == 2
        levels = served["throughput"]
        assert [level["concurrency"] for level in levels] == [1, 4]
        for level in levels:
            assert level["ok"] == level["requests"] == level["concurrency"] and level["errors"] == [], (name, level)
            assert level["clips_per_min"] > 0
        assert {"before", "after"} <= set(served["parallel_capacity"])
        if name == "video_720p":  # the same pipeline without Ray, right after levels 1 and 4
            scaling = served["in_process_scaling"]
            assert [lv["concurrency"] for lv in scaling] == [1, 4]
            for level in scaling:
                assert level["clips"] >= level["concurrency"] and level["cpu_ms_per_clip"] > 0
        else:
            assert "in_process_scaling" not in served


def test_the_early_exit_workload_exits_early_served_and_restores_triage(quick_run) -> None:
    result, _, _ = quick_run
    early, normal = result["workloads"]["early_exit"], result["workloads"]["video_720p"]
    assert early["in_process"]["early_exit"] is True and normal["in_process"]["early_exit"] is False
    served = early["served"]
    assert served["overrides_applied"] is True and served["restored"] is True
    assert served["latency"]["early_exits"] == 3 and served["paired"]["early_exits"] == 2
    assert normal["served"]["latency"]["early_exits"] == 0
    assert "decode_faces_floor" in served["paired"]["local_p50_ms"]
    # the normal clip ran every branch: keyframes were chosen, the early exit's were not
    assert normal["inputs"]["keyframes"] and early["inputs"]["keyframes"] is None


def test_memory_cold_start_and_targets_are_recorded(quick_run) -> None:
    result, _, _ = quick_run
    assert result["cold_start_s"] > 0
    memory = result["memory"]
    assert set(DEPLOYMENTS) <= set(memory["deployments"])
    for name in DEPLOYMENTS:
        assert memory["deployments"][name]["peak_pss_mib"] > 0, name
    assert memory["cluster_peak_pss_sum_mib"] >= sum(memory["deployments"][n]["peak_pss_mib"] for n in DEPLOYMENTS)
    assert len(result["targets"]) == 6 and all(isinstance(t["met"], bool) for t in result["targets"])
    (throughput,) = [t for t in result["targets"] if "throughput c=4" in t["target"]]
    assert "without Ray, the in-process pipeline in 1 and in 4 processes at once" in throughput["measured"]


def test_the_report_is_the_rendering_of_the_result_and_names_the_command(quick_run) -> None:
    result, markdown, path = quick_run
    assert markdown == render(result, str(path))
    assert "--video-seconds 1" in markdown and "## Targets (issue 5)" in markdown
    for name in WORKLOADS:
        assert f"### `{name}`" in markdown
