"""`spectrashield analyze` and `spectrashield batch` in-process: summaries, JSON, skips, resume, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.mediagen import (
    encode_audio,
    encode_image,
    speech_like_audio,
    talking_face_video,
)
from training.analyst import DEFAULT_PROFILE, Analyzer, run_batch, summary
from training.cli import main as cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "clip.mp4").write_bytes(talking_face_video(seconds=2.0, size=(320, 240), with_audio=True, seed=2))
    (root / "nested" / "photo.png").write_bytes(encode_image(np.full((48, 64, 3), 90, np.uint8), "png"))
    (root / "nested" / "deeper" / "voice.bin").write_bytes(encode_audio(speech_like_audio(1.5)))  # named oddly on purpose
    (root / "nested" / "readme.mp4").write_text("this is text with a video's name")
    return root


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(None, None, DEFAULT_PROFILE, None)


def test_analyze_prints_a_readable_summary_and_json(folder: Path, capsys) -> None:
    assert cli(["analyze", str(folder / "clip.mp4")]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{folder / 'clip.mp4'}: ") and "probability of manipulation" in text
    for modality in ("triage", "visual", "av", "audio"):
        assert f"  {modality} " in text
    assert "models: FastTriage fast_triage/" in text
    assert cli(["analyze", "--json", str(folder / "clip.mp4"), str(folder / "nested" / "readme.mp4")]) == 1
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["verdict"] in ("fake", "real", "uncertain") and first["media"]["kind"] == "video"
    assert second["error"] == "not_media"


def test_summary_words_each_verdict() -> None:
    base = {"fake_probability": 0.5, "media": {"kind": "image", "duration_s": 0.0, "width": 1, "height": 1,
            "face_coverage": 0.0}, "reasons": [], "modalities": {}, "hotspots": [], "models": {}}
    assert "UNCERTAIN: no confident call" in summary("x", {**base, "verdict": "uncertain"})
    assert "FAKE (probability of manipulation 90%)" in summary("x", {**base, "verdict": "fake", "fake_probability": 0.9})
    assert summary("x", {"error": "too_large", "detail": "big"}) == "x: not analysed (too_large): big"


def test_batch_walks_by_content_resumes_and_writes_the_report(folder: Path, analyzer: Analyzer, tmp_path: Path) -> None:
    out = tmp_path / "report"
    calls: list[Path] = []

    def counting(path: Path):
        calls.append(path)
        return analyzer(path)

    counts = run_batch(folder, out, counting, progress=False)
    assert counts == {"files": 4, "resumed": 0, "analysed": 3, "skipped": 1, "failed": 0}
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert by_path["nested/deeper/voice.bin"]["answer"]["media"]["kind"] == "audio"  # by content, not name
    assert by_path["nested/readme.mp4"]["answer"]["error"] == "not_media"
    clip = by_path["clip.mp4"]
    assert clip["thumbnails"] and all((out / t).read_bytes()[:2] == b"\xff\xd8" for t in clip["thumbnails"])
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["path"] for r in table] == sorted(by_path) and {r["status"] for r in table} == {"analysed", "skipped"}
    index = (out / "index.html").read_text()
    assert "sortBy(2,true)" in index and f"href='{clip['page']}'" in index and "1 skipped (not media)" in index
    page = (out / clip["page"]).read_text()
    assert "data:image/png;base64," in page and Path(clip["thumbnails"][0]).name in page
    # A second run analyses nothing; a changed file is analysed again.
    calls.clear()
    assert run_batch(folder, out, counting, progress=False)["resumed"] == 4 and calls == []
    (folder / "nested" / "photo.png").write_bytes(encode_image(np.full((48, 64, 3), 200, np.uint8), "png"))
    again = run_batch(folder, out, counting, progress=False)
    assert calls == [folder / "nested" / "photo.png"] and again["analysed"] == 1
    assert len((out / "results.csv").read_text().splitlines()) == 5  # one row per file, the newest answer


def test_analyze_takes_urls_under_the_services_rules(capsys) -> None:
    assert cli(["analyze", "http://127.0.0.1:9/photo.png", "ftp://example.org/x.mp4"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("http://127.0.0.1:9/photo.png: not analysed (bad_url)") and "non-public" in out[0]
    assert out[1].startswith("ftp://example.org/x.mp4: not analysed (not_found)")  # not http(s): taken as a path


def test_batch_heatmaps_show_where_the_visual_model_looked(tmp_path: Path) -> None:
    media = tmp_path / "in"
    media.mkdir()
    (media / "clip.mp4").write_bytes(talking_face_video(seconds=2.0, size=(320, 240), with_audio=True, seed=2))
    (media / "flat.png").write_bytes(encode_image(np.full((48, 64, 3), 90, np.uint8), "png"))  # no face
    out = tmp_path / "report"
    run_batch(media, out, Analyzer(None, None, DEFAULT_PROFILE, None, heatmaps=True), progress=False)
    rows = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    clip, flat = rows["clip.mp4"], rows["flat.png"]
    assert len(clip["heatmaps"]) == len(clip["thumbnails"]) == len(clip["answer"]["keyframes"])
    assert any(clip["heatmaps"]) and all((out / h).read_bytes()[:2] == b"\xff\xd8" for h in clip["heatmaps"] if h)
    assert Path(next(h for h in clip["heatmaps"] if h)).name in (out / clip["page"]).read_text()
    assert len(flat["thumbnails"]) == 1 and flat["heatmaps"] == [None]  # an image's picture; no face, no map
    with pytest.raises(SystemExit):  # the heat-maps need the model here
        cli(["batch", str(media), "--out", str(out), "--heatmaps", "--url", "http://127.0.0.1:9"])
