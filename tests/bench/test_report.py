"""The benchmark page writer: the numbers each issue-5 target is judged on, and what the page shows. No timing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.report import CHANGES, evaluate_targets, num, render


def _workload(floor: float, in_process: float, served_p50: float, c1: float, c4: float, early: bool = False) -> dict:
    def level(c: int, clips: float) -> dict[str, Any]:
        return {"concurrency": c, "requests": 4 * c, "ok": 4 * c, "elapsed_s": 10.0, "clips_per_min": clips,
                "p50_ms": served_p50 * c, "p95_ms": served_p50 * c + 50, "p99_ms": served_p50 * c + 80,
                "early_exits": 4 * c if early else 0, "errors": [],
                "timings_ms_mean": {"decode": served_p50 - 50, "total": served_p50 - 10}, "latencies_ms": []}

    return {
        "workload": {"name": "w"},
        "floor": {"decode_ms": floor - 40, "forward_ms": {"triage": 25.0, "fusion": 15.0}, "total_ms": floor},
        "in_process": {"p50_ms": in_process, "runs": 5, "early_exit": early,
                       "stage_mean_ms": {"decode": in_process - 60, "total": in_process}},
        "inputs": {},
        "served": {"levels": [level(1, c1), level(4, c4)]},
    }


@pytest.fixture()
def result() -> dict:
    found = {
        "schema": 2, "started_at": "2026-12-05T00:00:00+00:00", "command": ".venv/bin/python -m bench.run",
        "machine": {"cpu": "CPU", "logical_cores": 2, "ram_gib": 23.5, "gpu": None, "versions": "t / r / a",
                    "commit": "abc"},
        "options": {"quick": False, "profile": "cluster/serve.cpu.yaml", "concurrency": [1, 4], "requests": 20},
        "weights": {"fusion": "fusion/v1"},
        "url": "http://127.0.0.1:8000", "served_error": None, "cold_start_s": 22.4,
        "memory": {"deployments": {"Fusion": {"replicas": 1, "peak_pss_mib": 414.0, "peak_pss_all_mib": 414.0}},
                   "cluster_peak_pss_mib": 4966.4, "samples": 30},
        "workloads": {"video_720p": _workload(1000.0, 1100.0, 1200.0, 60.0, 100.0),
                      "early_exit": _workload(800.0, 750.0, 900.0, 65.0, 100.0, early=True)},
    }
    found["targets"] = evaluate_targets(found)
    return found


def test_each_target_is_judged_on_its_own_numbers(result: dict) -> None:
    targets = [(t["measured"], t["met"]) for t in result["targets"]]
    assert targets == [
        ("1.09 (1,200 / 1,100)", True),  # served c=1 p50 / in-process p50
        ("1.10 (1,100 / 1,000)", True),  # in-process / floor
        ("1.67 (100 / 60)", True),  # c4 / c1 clips per minute
        ("served p50 900 ms vs limit 910 ms (decode floor 760 ms)", True),
        ("4.85 GiB", True),
        ("22.4 s", True),
    ]


def test_an_early_exit_that_did_not_exit_is_missed_whatever_its_latency(result: dict) -> None:
    result = copy.deepcopy(result)
    result["workloads"]["early_exit"]["served"]["levels"][0].update(p50_ms=100.0, early_exits=3)
    (early,) = [t for t in evaluate_targets(result) if t["target"].startswith("early exit")]
    assert early["met"] is False and early["measured"].endswith("not every answer exited early")


def test_what_was_not_measured_is_said_not_judged(result: dict) -> None:
    result = copy.deepcopy(result)
    del result["workloads"]["early_exit"]
    result["workloads"]["video_720p"]["served"] = {}
    result.update(memory=None, cold_start_s=None, served_error="RuntimeError: serve run not ready")
    targets = evaluate_targets(result)
    assert [t["met"] for t in targets] == [None, True, None, None, None, None]
    result["targets"] = targets
    page = render(result)
    assert "> **The served part failed:** RuntimeError: serve run not ready" in page
    assert "| `video_720p` | 1,000 | 1,100 | — | — | — | — | 1.10× |" in page
    assert "Whole cluster: not measured" in page and "Not measured (the benchmark did not start the service)." in page


def test_the_page_has_every_table_and_ends_with_the_change_history(result: dict) -> None:
    page = render(result, "bench/results/x.json")
    assert page == render(result, "bench/results/x.json")
    for row in (
        "| `video_720p` | 1,000 | 1,100 | 1,200 | 1,250 | 1,280 | 1.09× | 1.10× |",  # latency
        "| `video_720p` | 960 | 25 | — | — | 15 |",  # floor parts
        "| `early_exit` | 690 / 850 | — / — | — / — | — / — | — / — | — / — | 750 / 890 |",  # stages
        "| `video_720p` | 60 | 100 | 1.67× | 0 |",  # throughput
        "| Fusion | 1 | 414 | 414 |",  # memory
        "| result file | `bench/results/x.json` |",
        "| early exit: served p50 <= decode floor + 150 ms | served p50 900 ms vs limit 910 ms (decode floor 760 ms) "
        "| met |",
    ):
        assert row in page, row
    assert "**22.4 s**" in page and "peak sum of PSS: **4,966 MiB**" in page
    assert page.endswith(CHANGES.read_text())


@pytest.mark.parametrize(("value", "text"), [(None, "—"), (0.52, "0.52"), (24.31, "24.3"), (1234.5, "1,234")])
def test_numbers_keep_three_significant_figures(value: float | None, text: str) -> None:
    assert num(value) == text
