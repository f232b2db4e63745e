"""Performance benchmarks for SpectraShield (not tests: they write tables, they never assert timings).

`python -m bench.run` (or `make bench`) measures, in one run on one machine, the decode and
model-forward floor, the same stages called in-process without Ray, and the served graph over
HTTP, then writes `bench/results/<timestamp>-<host>.json` and regenerates `BENCHMARKS.md`.
"""
