"""Performance benchmarks for SpectraShield (not tests: they write tables, they never assert timings).

`python -m bench.run` (`make bench`) writes `bench/results/` and `BENCHMARKS.md`; `bench.edge_campaign` the edge's.
"""
