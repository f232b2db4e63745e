"""Prometheus metrics through `ray.serve.metrics`; Ray's metrics agent exports them with a `ray_` prefix.

Created lazily inside the replica (metric objects need a running Ray worker).
"""

from __future__ import annotations

import functools

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]


class PipelineMetrics:
    """What the ingress records per request: stage latency, verdicts, early exits, errors."""

    def __init__(self) -> None:
        self.stage_latency = metrics.Histogram(
            "spectrashield_stage_latency_ms",
            description="wall time of each pipeline stage as the ingress sees it, and of the whole request",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.verdicts = metrics.Counter(
            "spectrashield_verdicts_total", description="answered analyses by verdict and media kind",
            tag_keys=("verdict", "kind"),
        )
        self.early_exits = metrics.Counter(
            "spectrashield_early_exits_total", description="clips settled by FastTriage alone", tag_keys=("verdict",),
        )
        self.errors = metrics.Counter(
            "spectrashield_errors_total",
            description="rejected or failed requests by kind (not_media, too_large, unusable_media, bad_request, "
            "branch_failed, internal)",
            tag_keys=("kind",),
        )

    def record_timings(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stage_latency.observe(ms, tags={"stage": stage})


class WeightsMetrics:
    """What a model deployment records: the versions it serves and which one answered.

    Serve adds the `deployment` (and `replica`, `application`) tags itself; it reserves those names.
    """

    def __init__(self) -> None:
        self.version_info = metrics.Gauge(
            "spectrashield_weights_version_info",
            description="1 for each weights version a deployment serves (role primary or canary), 0 once replaced",
            tag_keys=("version", "role"),
        )
        self.requests = metrics.Counter(
            "spectrashield_model_requests_total", description="model calls by deployment and the version that answered",
            tag_keys=("version",),
        )
        self._shown: set[tuple[str, str]] = set()

    def serving(self, primary: str | None, canary: str | None) -> None:
        now = {(v, role) for v, role in ((primary, "primary"), (canary, "canary")) if v}
        for version, role in self._shown - now:
            self.version_info.set(0, tags={"version": version, "role": role})
        for version, role in now:
            self.version_info.set(1, tags={"version": version, "role": role})
        self._shown = now

    def answered(self, version: str) -> None:
        self.requests.inc(tags={"version": version})
        # Ray exports a gauge around when it is recorded: re-assert the served versions with the traffic.
        for shown_version, role in self._shown:
            self.version_info.set(1, tags={"version": shown_version, "role": role})


@functools.cache
def pipeline_metrics() -> PipelineMetrics:
    return PipelineMetrics()
