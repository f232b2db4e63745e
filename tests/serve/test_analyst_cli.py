"""`spectrashield analyze --url` against the running service gives the in-process verdict."""

from __future__ import annotations

import json

import pytest

from tests.mediagen import talking_face_video
from training.cli import main as cli

pytestmark = pytest.mark.serve


def test_analyze_over_http_matches_in_process(service, tmp_path, capsys) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(talking_face_video(seconds=2.0, size=(320, 240), with_audio=True, seed=4))
    assert cli(["analyze", "--json", str(clip)]) == 0
    local = json.loads(capsys.readouterr().out)
    assert cli(["analyze", "--json", "--url", service.url, str(clip)]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["verdict"] == local["verdict"]
    assert served["fake_probability"] == pytest.approx(local["fake_probability"], abs=1e-3)
    served_models = {k: v["version"] for k, v in served["models"].items() if k != "MediaDecoder"}  # in-process has none
    assert served_models == {k: v["version"] for k, v in local["models"].items()}
    assert cli(["analyze", "--url", service.url, str(clip)]) == 0
    assert capsys.readouterr().out.startswith(f"{clip}: {local['verdict'].upper()}")


def test_batch_over_http_keeps_the_keyframe_pictures(service, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(talking_face_video(seconds=2.0, size=(320, 240), with_audio=True, seed=4))
    out = tmp_path / "report"
    assert cli(["batch", str(folder), "--out", str(out), "--url", service.url, "--no-progress"]) == 0
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["answer"]["keyframes"] and len(row["thumbnails"]) == len(row["answer"]["keyframes"])
    assert all((out / t).read_bytes()[:2] == b"\xff\xd8" for t in row["thumbnails"])
