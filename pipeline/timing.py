"""Per-stage wall time for `timings_ms`."""

from __future__ import annotations

import time


class Timer:
    """`with Timer() as t: ...; t.ms`."""

    def __enter__(self) -> "Timer":
        self._start = time.perf_counter()
        self.ms = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self._start) * 1e3
