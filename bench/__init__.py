"""Performance benchmarks, not tests (never asserting timings): `make bench` (`bench.run`), `bench.edge_campaign`."""
