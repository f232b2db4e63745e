"""The machine probes the benchmark records beside its numbers (no timing is asserted)."""

from __future__ import annotations

from bench.machine import parallel_capacity


def test_parallel_capacity_runs_one_kernel_per_core_and_summarises_the_rounds() -> None:
    found = parallel_capacity(rounds=2, n=20_000)
    assert found["rounds"] == 2 and found["copies"] >= 1
    assert 0 < found["min"] <= found["median"] <= found["max"]
