"""The benchmark's paired latency run against the shared Serve instance: alternation and what it reports."""

from __future__ import annotations

import pytest

from bench import served
from tests.mediagen import encode_audio, speech_like_audio

pytestmark = pytest.mark.serve


def test_paired_run_rotates_served_requests_and_local_runs(service, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_post = served.post

    async def recording_post(client, upload):
        events.append("served")
        return await real_post(client, upload)

    monkeypatch.setattr(served, "post", recording_post)
    in_process_ms = iter([5.0, 100.0, 300.0, 200.0, 400.0])  # the first is the warm-up's

    def in_process() -> float:
        events.append("in")
        return next(in_process_ms)

    upload = served.Upload(encode_audio(speech_like_audio(1.0, seed=4), 16_000, "wav"), "speech.wav")
    result = served.paired(service.url, upload, 4, {"in_process": in_process})

    # warm-up round, then A B, B A, A B, B A
    assert events == ["in", "served", "in", "served", "served", "in", "in", "served", "served", "in"]
    assert result["pairs"] == 4 and result["ok"] == 4 and not result["errors"]
    assert result["local_ms"] == {"in_process": [100.0, 300.0, 200.0, 400.0]}  # the warm-up is not counted
    assert result["in_process_p50_ms"] == 250.0
    assert len(result["served_ms"]) == 4 and all(v > 0 for v in result["served_ms"])
    assert result["ratio_of_p50s"] == pytest.approx(result["served_p50_ms"] / 250.0)

    events.clear()
    three = served.paired(service.url, upload, 3, {"in_process": lambda: events.append("in") or 1.0,
                                                  "floor": lambda: events.append("floor") or 2.0})
    # every side once per round, the order rotating: A B S, B S A, S A B
    assert events == ["in", "floor", "served"] + ["in", "floor", "served", "floor", "served", "in", "served", "in", "floor"]
    assert three["local_p50_ms"] == {"in_process": 1.0, "floor": 2.0} and three["ok"] == 3
