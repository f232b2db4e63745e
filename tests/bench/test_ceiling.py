"""`bench.ceiling`: rotation, the summary, and the in-process half run for real (no timing asserted)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from bench.ceiling import WorkerPool, main, rotation, summarize


def test_rotation_moves_every_measure_through_every_place() -> None:
    measures = ["a", "b", "c", "d"]
    orders = [rotation(measures, r) for r in range(4)]
    assert orders[0] == measures
    for place in range(4):
        assert sorted(order[place] for order in orders) == measures
    assert rotation(measures, 5) == orders[1]


def test_summary_ratios_are_of_medians_and_per_round() -> None:
    levels = {
        "in_process_c1": [{"clips_per_min": 60.0}, {"clips_per_min": 70.0}, {"clips_per_min": 80.0}],
        "in_process_c4": [{"clips_per_min": 90.0}, {"clips_per_min": 140.0}, {"clips_per_min": 100.0}],
        "served_c1": [{"clips_per_min": 50.0}],
        "served_c4": [],
    }
    out = summarize(levels, 4)
    assert out["median_clips_per_min"] == {"in_process_c1": 70.0, "in_process_c4": 100.0, "served_c1": 50.0}
    assert out["in_process_ratio"] == pytest.approx(100 / 70, abs=1e-3)
    assert out["in_process_ratio_per_round"] == [1.5, 2.0, 1.25]
    assert "served_ratio" not in out  # nothing measured at c4: no ratio rather than a made-up one


def test_in_process_levels_run_the_pipeline_in_that_many_processes(tmp_path: Path) -> None:
    record = main([
        "--in-process-only", "--concurrency", "2", "--seconds", "1", "--rounds", "2", "--video-seconds", "1",
        "--cache-dir", str(tmp_path / "media"), "--out", str(tmp_path / "results"),
    ])
    assert set(record["levels"]) == {"in_process_c1", "in_process_c2"}
    for name, runs in record["levels"].items():
        assert len(runs) == 2
        for level in runs:
            assert level["concurrency"] == int(name[-1])
            assert level["clips"] >= level["concurrency"]  # every worker finished at least the run it started
            assert level["cpu_ms_per_clip"] > 0
    assert len(record["parallel_capacity"]) == 2
    assert len(record["summary"]["in_process_ratio_per_round"]) == 2
    (written,) = (tmp_path / "results").glob("ceiling-*.json")
    assert json.loads(written.read_text())["summary"] == record["summary"]


def test_a_worker_that_dies_fails_the_pool_at_once_and_leaves_no_process(tmp_path: Path) -> None:
    profile = Path(__file__).resolve().parents[2] / "cluster/serve.cpu.yaml"
    with pytest.raises(RuntimeError, match="exited"):
        WorkerPool(profile, tmp_path / "missing.mp4", 2)  # each worker fails to read its clip
    assert not multiprocessing.active_children()
