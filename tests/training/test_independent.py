"""The independent (test-only) benchmark generator and the cross-generator column of `spectrashield eval`.

The generator must be deterministic, cover every family and kind with the requested counts,
write files the served decoder reads, label them consistently, draw faces from small to large,
and implement its manipulations as stated: an `av_offset` clip's audio is shifted against the
mouth, a Poisson swap changes only the face. Small settings (640x360, about one-second clips) keep
this file near 30 s on two cores.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from media.config import DecodeConfig
from media.decode import decode_media
from tests.training.test_evaluate import save_untrained
from tests.training.test_train import write_tiny_manifest
from training.cli import main as cli_main
from training.independent import (
    INDEPENDENT_FAMILIES,
    MANIFEST_NAME,
    SOURCE,
    VIDEO_FAMILIES,
    IndependentConfig,
    generate_independent,
    plan_items,
    render_item,
)
from training.manifest import read_manifest

SMALL = {"resolutions": ((640, 360), (360, 640)), "image_sizes": ((640, 480), (480, 640))}
CONFIG = IndependentConfig(n_videos=8, n_images=6, n_audio=2, seed=3, seconds=(1.0, 1.3), **SMALL)
FPS = 25


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("independent")
    generate_independent(out, CONFIG, progress=False)
    return out / MANIFEST_NAME


def test_generation_is_deterministic(tmp_path: Path) -> None:
    config = IndependentConfig(n_videos=6, n_images=4, n_audio=4, seed=11, seconds=(0.5, 0.6), **SMALL)
    first = generate_independent(tmp_path / "a", config, progress=False)
    codecs = {e.meta.get("codec", e.meta.get("format")) for e in first}
    assert {"h264", "hevc", "vp9", "jpg", "png", "wav", "flac", "mp3", "ogg"} <= codecs  # every encoder, muxer
    second = generate_independent(tmp_path / "b", config, progress=False)
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()
    assert [e.path for e in first] == [e.path for e in second]
    for entry in first:
        assert (tmp_path / "a" / entry.path).read_bytes() == (tmp_path / "b" / entry.path).read_bytes(), entry.path
    assert [i.face_u for i in plan_items(config.model_copy(update={"seed": 12}))] != [i.face_u for i in plan_items(config)]


def test_every_family_and_kind_with_the_requested_counts(benchmark: Path) -> None:
    entries = list(read_manifest(benchmark))
    assert Counter(e.kind for e in entries) == {"video": 8, "image": 6, "audio": 2}
    assert {e.split for e in entries} == {"test"} and {e.source for e in entries} == {SOURCE}
    families = {kind: Counter(f for e in entries if e.kind == kind for f in e.families) for kind in ("video", "image",
                                                                                                    "audio")}
    assert set(families["video"]) == set(VIDEO_FAMILIES)
    assert set(families["image"]) == {"face_swap_poisson"} and set(families["audio"]) == {"audio_resynth"}
    for kind in ("video", "image", "audio"):
        assert any(e.label == 0 and e.kind == kind for e in entries), kind
    faceless = [e for e in entries if e.kind == "image" and e.meta.get("face") is False]
    assert faceless and all(e.label == 0 and e.meta["photo"] in ("coffee", "chelsea", "rocket", "camera")
                            for e in faceless)
    assert all(e.group for e in entries)
    swaps = [e for e in entries if "face_swap_poisson" in e.families]
    assert all(e.meta["donor_group"] != e.group for e in swaps)
    assert all((benchmark.parent / e.path).is_file() for e in entries)
    assert not any(f in e.path for e in entries for f in INDEPENDENT_FAMILIES)  # names do not give labels away


def test_files_decode_with_the_served_decoder(benchmark: Path) -> None:
    config = DecodeConfig(analyze_faces=False)
    for entry in read_manifest(benchmark):
        clip = decode_media((benchmark.parent / entry.path).read_bytes(), config)
        assert clip.meta.kind == entry.kind, entry.path
        if entry.kind == "video":
            assert [clip.meta.width, clip.meta.height] == entry.meta["resolution"]
            assert clip.meta.has_audio and clip.n_frames > 0
            assert abs(clip.meta.duration_s - entry.meta["seconds"]) < 0.15
            assert clip.meta.video_codec in ("h264", "hevc", "vp9")
        elif entry.kind == "audio":
            assert abs(clip.audio.size / clip.sample_rate - entry.meta["seconds"]) < 0.1
        else:
            assert clip.n_frames == 1


def test_labels_families_and_modalities_agree(benchmark: Path) -> None:
    for e in read_manifest(benchmark):
        assert e.label == int(bool(e.families)) and set(e.families) <= set(INDEPENDENT_FAMILIES)
        labels = e.modality_labels
        if e.kind == "video":
            family = e.families[0] if e.families else None
            assert (labels.visual, labels.audio, labels.av) == (
                int(family == "face_swap_poisson"), 0, int(family in ("audio_swap", "mouth_freeze", "av_offset"))
            )
            for key in ("face_height_px", "resolution", "codec", "crf", "sample_rate", "mouth_open", "face_centre"):
                assert key in e.meta, key
            assert len(e.meta["mouth_open"]) == e.meta["n_frames"]
            if family == "av_offset":
                assert 200 <= abs(e.meta["av_offset_ms"]) <= 600
        elif e.kind == "image":
            assert (labels.visual, labels.audio, labels.av) == (e.label, None, None)
        else:
            assert (labels.visual, labels.audio, labels.av) == (None, e.label, None)
            assert e.meta["sample_rate"] in CONFIG.audio_sample_rates


def test_face_heights_span_small_to_large_anywhere_in_the_frame(benchmark: Path) -> None:
    faced = [e for e in read_manifest(benchmark) if "face_height_px" in e.meta]
    heights = np.array([e.meta["face_height_px"] for e in faced])
    assert heights.min() <= 62 and heights.max() >= 120, heights
    centres = np.array([e.meta["face_centre"] for e in faced])
    assert np.abs(centres - 0.5).max() > 0.15  # off-centre faces
    assert {e.meta["orientation"] for e in faced if e.kind == "video"} == {"portrait", "landscape"}
    for e in faced:  # the recorded box is in the frame and as high as recorded
        x0, y0, x1, y1 = e.meta["face_box"]
        w, h = e.meta["resolution"]
        assert -2 <= x0 < x1 <= w + 2 and -2 <= y0 < y1 <= h + 2, e.path
        assert abs((y1 - y0) - e.meta["face_height_px"]) < 0.35 * e.meta["face_height_px"]


def _envelope(audio: np.ndarray, sr: int, n_frames: int) -> np.ndarray:
    hop = sr // FPS
    power = np.convolve(audio.astype(np.float64) ** 2, np.ones(int(0.04 * sr)) / (0.04 * sr), mode="same")
    return np.sqrt(power[np.minimum(np.arange(n_frames) * hop, audio.size - 1)])


def _lag_frames(mouth: np.ndarray, env: np.ndarray, max_lag: int = 20) -> int:
    """L maximising corr(mouth[t + L], env[t]): the audio shows at t what the mouth shows at t + L."""
    best, best_r = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):
        a = mouth[max(lag, 0) : mouth.size + min(lag, 0)]
        b = env[max(-lag, 0) : env.size - max(lag, 0)]
        r = np.corrcoef(a, b)[0, 1] if a.size > 10 and a.std() > 0 and b.std() > 0 else -2.0
        if r > best_r:
            best, best_r = lag, r
    return best


def _cavity_share(frames: np.ndarray, centres: np.ndarray, face_h: float, mouth: np.ndarray) -> np.ndarray:
    """Per frame, the share of pixels round the mouth darker than 45 % of the closed mouth's median luma."""
    h, w = max(int(0.25 * face_h), 4), max(int(0.5 * face_h), 6)
    rois = []
    for frame, (x, y) in zip(frames, centres, strict=True):
        y0, x0 = round(y - 0.05 * face_h), round(x - 0.25 * face_h)
        rois.append(frame[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w].astype(float) @ [0.299, 0.587, 0.114])
    closed = np.median(rois[int(np.argmin(mouth))])
    return np.array([(roi < 0.45 * closed).mean() for roi in rois])


def test_av_offset_shifts_the_audio_against_the_rendered_mouth() -> None:
    config = IndependentConfig(n_videos=4, n_images=0, n_audio=0, seed=5, seconds=(3.0, 3.0),
                               resolutions=((640, 360),))
    items = {i.family: i for i in plan_items(config)}
    for family in (None, "av_offset"):
        out = render_item(items[family], config, keep=True)
        clip = decode_media(out.data, DecodeConfig(analyze_faces=False))
        mouth = np.asarray(out.meta["mouth_open"])
        lag_ms = _lag_frames(mouth, _envelope(clip.audio, clip.sample_rate, mouth.size)) * 1000 / FPS
        expected = out.meta.get("av_offset_ms", 0.0)
        assert abs(lag_ms - expected) <= 80, (family, lag_ms, expected)
        # the frames show the opening recorded in meta: dark pixels (the cavity) appear round the mouth
        assert np.corrcoef(_cavity_share(out.frames, out.mouth_centres, out.meta["face_height_px"], mouth),
                           mouth)[0, 1] > 0.6


def test_poisson_swap_changes_only_the_face() -> None:
    config = IndependentConfig(n_videos=2, n_images=2, n_audio=0, seed=7, seconds=(0.6, 0.6), **SMALL)
    for item in (i for i in plan_items(config) if i.family == "face_swap_poisson"):
        fake = render_item(item, config, keep=True)
        real = render_item(replace(item, family=None, donor=None), config, keep=True)
        assert fake.swap_masks is not None and fake.swap_masks.any()
        diff = np.abs(fake.frames.astype(int) - real.frames.astype(int)).max(axis=-1) > 0  # (T, H, W)
        assert not (diff & ~fake.swap_masks).any()  # nothing outside the cloned region changed
        assert diff.sum() > 0.5 * fake.swap_masks.sum()  # and inside it, most pixels did
        for mask, (x0, y0, x1, y1) in zip(fake.swap_masks, fake.face_boxes, strict=True):
            ys, xs = np.nonzero(mask)
            pad = 0.15 * (y1 - y0)
            assert xs.min() >= x0 - pad and xs.max() <= x1 + pad and ys.min() >= y0 - pad and ys.max() <= y1 + pad


def test_eval_reports_in_distribution_and_cross_generator_side_by_side(
    benchmark: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    in_distribution = write_tiny_manifest(tmp_path_factory.getbasetemp() / "tiny_benchmark")
    weights = tmp_path / "weights"
    save_untrained(weights, "x0")
    out = tmp_path / "eval"
    argv = ["eval", "--manifest", str(in_distribution), "--version", "x0", "--weights-dir", str(weights),
            "--out", str(out), "--cross-manifest", str(benchmark), "--no-baselines", "--device", "cpu",
            "--no-progress"]
    assert cli_main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["manifest"] == str(in_distribution) and report["n_scored"] == 7  # the in-distribution keys stay
    assert report["fused"]["overall"]["n"] == 7
    cross = report["cross_generator"]
    assert cross["manifest"] == str(benchmark) and cross["split"] == "test" and "baselines" not in cross
    assert cross["n_scored"] + cross["n_failed"] == 16
    assert set(cross["fused"]["per_family"]) == set(INDEPENDENT_FAMILIES)
    table = report["side_by_side"]
    assert set(table) == {"in_distribution", "cross_generator"}
    for column, n in (("in_distribution", 7), ("cross_generator", cross["n_scored"])):
        row = table[column]
        assert row["n"] == n and row["threshold"] == report["threshold"]
        assert row["n_unanswered"] == (cross["n_failed"] if column == "cross_generator" else 0)
        for key in ("auc", "eer", "ece", "authentic_called_fake", "uncertain_share"):
            assert row[key] is None or 0.0 <= row[key] <= 1.0, (column, key)
        assert row["uncertain_share"] is not None  # in-process scores carry the verdict
    assert table["in_distribution"]["faceless_authentic_called_fake"] is None
    faceless = table["cross_generator"]["faceless_authentic_called_fake"]
    assert faceless["n"] == sum(e.meta.get("face") is False for e in read_manifest(benchmark))
    assert (out / "cross_generator" / "metrics.json").is_file() and (out / "roc.png").is_file()
    printed = capsys.readouterr().out
    assert "cross_generator" in printed and "authentic answered fake" in printed


def test_real_speech_replaces_the_formant_voices(tmp_path: Path) -> None:
    """With `real_speech`, people speak real recordings (kept out of training): an authentic audio file
    is that recording, not a synthesized voice."""
    import wave

    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        t = np.arange(16_000 * 2) / 16_000
        x = 0.3 * np.sin(2 * np.pi * (150 + 60 * k) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
        x = x + 0.01 * rng.standard_normal(t.size)
        path = tmp_path / f"real{k}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16_000)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        paths.append(str(path))
    config = IndependentConfig(n_videos=0, n_images=0, n_audio=8, seed=1, seconds=(1.0, 1.0), real_speech=tuple(paths))
    items = [i for i in plan_items(config) if i.family is None and i.codec in ("wav", "flac")]
    assert items
    out = render_item(items[0], config, keep=True)
    assert out.meta["speaker"] == {"voice": "real"}
    heard = decode_media(out.data, DecodeConfig(analyze_faces=False)).audio
    sources = [decode_media(Path(p).read_bytes(), DecodeConfig(analyze_faces=False)).audio for p in paths]
    n = min(heard.size, 8000)
    best = max(abs(np.corrcoef(heard[:n], s[:n])[0, 1]) for s in sources)
    assert best > 0.95  # one of the real recordings, resampled, not a new voice
