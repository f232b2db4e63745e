"""Training: feature cache, targets, A/V shifting, temperature fitting, and one tiny run of every model.

A dozen-file manifest (every kind, both classes in every split) is encoded in a temp directory
with `tests.mediagen`; the whole `train_all` runs once per session on `test` presets for one
epoch, and each test reads what it wrote.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.data import astronaut

from media import Clip, DecodeConfig, DecodeDeadlineError, decode_media, select_keyframes
from models import load_bundle
from training import cli, features
from training.cli import main as cli_main
from pipeline.config import KeyframeConfig, PipelineConfig
from pipeline.keyframes import select_keyframes as keyframes_stage
from training import features
from training.features import ClipArrays, FeatureCache, ManifestData, load_manifest_data
from training.manifest import ManifestEntry, ModalityLabels, read_manifest, write_manifest
from training.train import (
    MODEL_NAMES,
    TrainResult,
    AVWindows,
    HPARAMS,
    HParams,
    av_items,
    drop_modalities,
    fit_temperature,
    freeze_mouth,
    jitter,
    nll,
    offset_target_ms,
    room_reverb,
    shift_window,
    spoof_target,
    sync_target,
    train_all,
    train_model,
    visual_target,
)
from tests.mediagen import (
    encode_audio,
    encode_image,
    encode_video,
    speech_like_audio,
    talking_face_frames,
    talking_face_mouth,
    talking_face_video,
)

SECONDS, SIZE, FPS = 1.5, (160, 120), 10


def _face_blend_video(seed: int) -> bytes:
    """A talking face whose cheeks and nose are blurred and tinted: a crude visual manipulation."""
    audio = speech_like_audio(SECONDS, 16_000, seed)
    n = int(SECONDS * FPS)
    frames = talking_face_frames(talking_face_mouth(audio, 16_000, FPS, n), SIZE, seed)
    patch = frames[:, 35:80, 55:105].astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(p, (9, 9), 0) for p in patch])
    frames[:, 35:80, 55:105] = np.clip(blurred * [1.1, 0.9, 0.9], 0, 255)
    return encode_video(frames, fps=FPS, audio=audio)


def _vocoded(seed: int) -> np.ndarray:
    """Speech through a ring modulator and 5-bit quantiser: a crude synthetic voice."""
    audio = speech_like_audio(SECONDS, 16_000, seed)
    ring = np.sin(2 * np.pi * 90 * np.arange(audio.size) / 16_000)
    return (np.round(audio * ring * 16) / 16).astype(np.float32)


def write_tiny_manifest(root: Path) -> Path:
    """Seven files per split (real/AV-shifted/face-blended video, real/upsampled image, real/vocoded
    audio) plus a re-compressed copy of the training real video; idempotent within a session."""
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    face = astronaut()[40:220, 102:342]
    entries = []

    def add(name: str, data: bytes, split: str, label: int, kind: str, labels: dict, **kwargs) -> str:
        (root / name).write_bytes(data)
        entries.append(ManifestEntry(
            path=name, label=label, kind=kind, split=split, modality_labels=ModalityLabels(**labels),
            group=f"{split}-{name.split('_')[0]}", **kwargs,
        ))
        return name

    for k, split in enumerate(("train", "val", "fusion", "test")):
        seed = 10 * k
        video = dict(seconds=SECONDS, size=SIZE, fps=FPS)
        real = add(f"{split}_real.mp4", talking_face_video(seed=seed, **video), split, 0, "video",
                   {"visual": 0, "audio": 0, "av": 0})
        add(f"{split}_shift.mp4", talking_face_video(seed=seed + 1, lip_delay_s=0.4, **video), split, 1, "video",
            {"visual": 0, "audio": 0, "av": 1}, families=["av_shift"], compression="crf30",
            meta={"av_offset_ms": 400.0})
        add(f"{split}_blend.mp4", _face_blend_video(seed + 2), split, 1, "video", {"visual": 1, "audio": 0, "av": 0},
            families=["face_blend"])
        add(f"{split}_real.jpg", encode_image(np.ascontiguousarray(np.roll(face, 5 * k, axis=1)), "jpeg"), split, 0,
            "image", {"visual": 0})
        small = cv2.resize(face, (60, 45), interpolation=cv2.INTER_AREA)
        add(f"{split}_upsample.png", encode_image(cv2.resize(small, face.shape[1::-1]), "png"), split, 1, "image",
            {"visual": 1}, families=["upsample"])
        add(f"{split}_real.wav", encode_audio(speech_like_audio(SECONDS, 16_000, seed + 3)), split, 0, "audio",
            {"audio": 0})
        add(f"{split}_vocoder.wav", encode_audio(_vocoded(seed + 4)), split, 1, "audio", {"audio": 1},
            families=["vocoder"])
        if split == "train":
            frames = talking_face_frames(np.zeros(int(SECONDS * FPS)), SIZE, seed)
            recompressed = encode_video(frames, fps=FPS, encoder_options={"crf": "40"})
            add("train_recompressed.mp4", recompressed, split, 0, "video", {"visual": 0}, compression="crf40",
                meta={"original": real})
    write_manifest(entries, manifest)
    return manifest


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_manifest(tmp_path_factory.getbasetemp() / "tiny_benchmark")


@pytest.fixture(scope="session")
def trained(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, TrainResult]]:
    """Every model, `test` preset, one epoch, version `t1`, in a temp weights root."""
    weights = tmp_path_factory.mktemp("weights")
    results = train_all(tiny_manifest, "t1", weights_dir=weights, preset="test", epochs=1, progress=False)
    return weights, results


# ---- feature cache -------------------------------------------------------------------------------


def test_feature_cache_decodes_once_then_hits(tiny_manifest: Path, tmp_path: Path) -> None:
    files = [tiny_manifest.parent / e.path for e in read_manifest(tiny_manifest) if e.split == "val"]
    cache = FeatureCache(tmp_path / "cache")
    first = cache.build(files, progress=False)
    assert (first.decoded, first.hits, first.failed) == (len(files), 0, {})
    second = FeatureCache(tmp_path / "cache").build(files, progress=False)
    assert (second.decoded, second.hits) == (0, len(files))
    assert second.paths == first.paths
    # a different decode config is a different cache entry, never a stale hit
    other = FeatureCache(tmp_path / "cache", DecodeConfig(analysis_fps=5.0))
    assert all(other.entry_path(f) != p for f, p in first.paths.items())
    # ... but a setting that changes only decoding speed reuses the entries
    one_thread = FeatureCache(tmp_path / "cache", DecodeConfig(frame_threads=False))
    assert all(one_thread.entry_path(f) == p for f, p in first.paths.items())

    video = ClipArrays.load(first.paths[tiny_manifest.parent / "val_real.mp4"])
    assert video.kind == "video" and video.n_frames == 15 and video.face_found.any()
    assert video.face_crops.shape == (15, 128, 128, 3) and video.mouth_crops.shape == (15, 48, 96)
    assert video.audio.size > 16_000 and video.flow_frames.shape[0] == 15
    audio = ClipArrays.load(first.paths[tiny_manifest.parent / "val_real.wav"])
    assert audio.kind == "audio" and audio.n_frames == 0 and audio.has_audio


def test_a_changed_decoder_is_a_cache_miss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Arrays written by other decoding code (or other library versions) are never read back."""
    file = tmp_path / "clip.mp4"
    file.write_bytes(b"any bytes: only the entry's name is computed")
    before = FeatureCache(tmp_path / "cache").entry_path(file)
    # an edit to a decoder source
    real_read = Path.read_bytes
    monkeypatch.setattr(
        Path, "read_bytes", lambda self: real_read(self) + (b"# edited" if self.name == "faces.py" else b"")
    )
    features.decoder_fingerprint.cache_clear()
    edited = FeatureCache(tmp_path / "cache").entry_path(file)
    monkeypatch.undo()
    # another version of a decoding library
    real_version = features.metadata.version
    monkeypatch.setattr(features.metadata, "version", lambda d: "0.0" if d == "av" else real_version(d))
    features.decoder_fingerprint.cache_clear()
    upgraded = FeatureCache(tmp_path / "cache").entry_path(file)
    monkeypatch.undo()
    features.decoder_fingerprint.cache_clear()
    assert FeatureCache(tmp_path / "cache").entry_path(file) == before
    assert len({before, edited, upgraded}) == 3


def test_undecodable_file_is_recorded_and_cached(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"this is not a video")
    report = FeatureCache(tmp_path / "cache").build([bad], progress=False)
    assert bad in report.failed and bad not in report.paths
    again = FeatureCache(tmp_path / "cache").build([bad], progress=False)
    assert again.decoded == 0 and bad in again.failed


def test_a_decode_too_slow_for_its_deadline_is_not_cached(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running past the deadline depends on the machine's load: reported, not kept, and decoded again next time."""
    video = tiny_manifest.parent / "val_real.mp4"
    real = features.decode_media

    def busy(data: bytes, config: DecodeConfig) -> Clip:
        raise DecodeDeadlineError("decoding takes more than 30 s")

    monkeypatch.setattr(features, "decode_media", busy)
    slow = FeatureCache(tmp_path / "cache").build([video], progress=False, workers=1)
    assert video in slow.failed and "DecodeDeadlineError" in slow.failed[video]
    assert not list((tmp_path / "cache").glob("*.err"))
    monkeypatch.setattr(features, "decode_media", real)
    again = FeatureCache(tmp_path / "cache").build([video], progress=False, workers=1)
    assert again.decoded == 1 and video in again.paths and not again.failed


def test_cached_grey_frames_give_the_served_keyframes(tiny_manifest: Path) -> None:
    """Keyframes from the cache's small grey frames equal keyframes from the decoder's full frames."""
    clip = decode_media((tiny_manifest.parent / "test_blend.mp4").read_bytes())
    arrays = ClipArrays.from_clip(clip)
    scores = np.random.default_rng(0).uniform(0, 1, clip.n_frames)
    served = select_keyframes(clip.frames, clip.timestamps, scores, k=4, seed=0)
    cached = keyframes_stage(arrays, scores, KeyframeConfig(k=4, seed=0))
    assert cached.indices == [k.index for k in served.keyframes]


# ---- targets and augmentation -------------------------------------------------------------------


def test_targets_fall_back_sensibly() -> None:
    def entry(**kwargs) -> ManifestEntry:
        return ManifestEntry(path="x", split="train", **kwargs)

    vocoded_video = entry(label=1, kind="video", families=["vocoder"],
                          modality_labels=ModalityLabels(visual=0, audio=1, av=0))
    assert (visual_target(vocoded_video), spoof_target(vocoded_video), sync_target(vocoded_video)) == (0, 1, 1)
    unlabelled_fake = entry(label=1, kind="video")
    assert visual_target(unlabelled_fake) == 1
    assert spoof_target(unlabelled_fake) is None and sync_target(unlabelled_fake) is None
    assert spoof_target(entry(label=1, kind="audio")) == 1
    shifted = entry(label=1, kind="video", modality_labels=ModalityLabels(av=1), meta={"av_offset_ms": -250.0})
    assert (sync_target(shifted), offset_target_ms(shifted)) == (0, -250.0)
    assert offset_target_ms(entry(label=0, kind="video")) == 0.0
    assert offset_target_ms(entry(label=1, kind="video", modality_labels=ModalityLabels(av=1))) is None


@pytest.mark.parametrize("lead_s", [0.3, -0.3, 0.0])
def test_shift_window_moves_audio_the_stated_way(lead_s: float) -> None:
    """A click heard at 1.0 s in the clip sits at 1.0 - t0 - lead in the window: early when lead > 0."""
    sr, click = 16_000, 1.0
    audio = np.zeros(3 * sr, np.float32)
    audio[int(click * sr)] = 1.0
    t = 30
    arrays = ClipArrays(
        kind="video", has_audio=True, face_coverage=1.0, duration_s=3.0,
        face_crops=np.zeros((t, 128, 128, 3), np.uint8), face_found=np.ones(t, bool),
        timestamps=np.arange(t) / 10.0, flow_frames=np.zeros((t, 8, 8), np.uint8),
        mouth_crops=np.zeros((t, 48, 96), np.uint8), lip_trajectory=np.zeros((t, 20, 2), np.float32), audio=audio,
    )
    for seed in range(5):
        window, frames, t0 = shift_window(arrays, 1.5, lead_s, np.random.default_rng(seed))
        assert window.shape == (24_000,) and len(frames) == 15
        assert arrays.timestamps[frames[0]] >= t0 - 1e-6 and arrays.timestamps[frames[-1]] < t0 + 1.5
        if window.max() > 0:
            assert np.argmax(window) / sr == pytest.approx(click - t0 - lead_s, abs=1 / sr)
        else:
            assert not 0 <= click - t0 - lead_s < 1.5


def test_fusion_input_noise_is_scaled_by_each_features_spread() -> None:
    """`jitter` adds noise of `noise` times each column's spread: none to a constant column, none at all at 0."""
    features = {"av": torch.zeros(20000, 3)}
    spread = {"av": torch.tensor([0.0, 1.0, 0.01])}
    generator = torch.Generator().manual_seed(0)
    assert jitter(features, spread, 0.0, generator) is features
    noisy = jitter(features, spread, 0.5, generator)["av"]
    assert not noisy[:, 0].any()
    np.testing.assert_allclose(noisy[:, 1:].std(dim=0).numpy(), [0.5, 0.005], rtol=0.05)


def test_freeze_mouth_holds_the_lips_still_where_they_moved() -> None:
    """The held span covers the asked share of the frames, is the first held frame repeated, lies where the
    lips moved (not in the pause), and leaves the rest and the inputs untouched; still lips give None."""
    t = 40
    aperture = np.where(np.arange(t) < 16, 0.0, np.sin(np.arange(t) * 1.3))  # a pause, then speech
    lips = np.zeros((t, 20, 2), np.float32)
    lips[:, :, 1] = aperture[:, None] * np.linspace(-1, 1, 20)[None]
    mouths = (np.arange(t)[:, None, None] * np.ones((1, 48, 96))).astype(np.uint8)
    before = lips.copy(), mouths.copy()
    held_lips, held_mouths = freeze_mouth(lips, mouths, np.random.default_rng(0), (0.4, 0.4), tries=8)
    np.testing.assert_array_equal(lips, before[0])
    np.testing.assert_array_equal(mouths, before[1])
    still = np.flatnonzero(held_mouths[:, 0, 0] != mouths[:, 0, 0]) - 1  # frames after the first held one
    start, n = int(still[0]), 16
    assert len(still) == n - 1 and start >= 12  # 16 frames held, mostly after the pause
    assert (held_mouths[start : start + n] == mouths[start]).all()
    assert np.allclose(held_lips[start : start + n], lips[start])
    outside = np.r_[0:start, start + n : t]
    np.testing.assert_array_equal(held_lips[outside], lips[outside])
    assert freeze_mouth(np.zeros_like(lips), mouths, np.random.default_rng(0)) is None


def _av_training_windows(tiny_manifest: Path) -> tuple[ManifestData, list[tuple[int, str]], list[int], HParams]:
    """The tiny manifest's AV training items, the indices of its in-sync "av" items (at least one), and the test
    preset without shifted negatives."""
    settings = PipelineConfig()
    data = load_manifest_data(tiny_manifest, splits=("train",), decode_config=settings.decode, progress=False)
    items = av_items(data, "train", settings)
    in_sync = [k for k, (i, mode) in enumerate(items) if mode == "av" and sync_target(data.entries[i]) == 1]
    assert in_sync
    return data, items, in_sync, replace(HPARAMS[("av_alignment", "test")], shift_prob=0.0)


def test_frozen_mouth_windows_are_out_of_sync_negatives(tiny_manifest: Path) -> None:
    """With `freeze_prob` 1 (and no shifts) every in-sync training window becomes a frozen-mouth negative
    (sync 0, no offset target); at 0, the default, none does (v1's recipe)."""
    data, items, in_sync, base = _av_training_windows(tiny_manifest)
    for k in in_sync:
        plain = AVWindows(data, items, base, seed=0)[k]
        frozen = AVWindows(data, items, replace(base, freeze_prob=1.0), seed=0)[k]
        assert plain["sync"] == 1.0 and plain["offset_s"] == 0.0
        assert frozen["sync"] == 0.0 and np.isnan(frozen["offset_s"])
        steps = np.abs(np.diff(frozen["lips"], axis=0)).sum(axis=(1, 2))
        assert (steps == 0).sum() > (np.abs(np.diff(plain["lips"], axis=0)).sum(axis=(1, 2)) == 0).sum()


def test_in_sync_windows_stay_positives_within_the_sync_jitter(tiny_manifest: Path) -> None:
    """With `sync_jitter_ms` 100 (and no shifts) every in-sync window stays a positive (sync 1) with its audio moved
    by the lead its offset target says, within 100 ms, and not all by the same; at 0 every lead is 0."""
    data, items, in_sync, base = _av_training_windows(tiny_manifest)
    leads, checked = [], 0
    for k in in_sync:
        plain = AVWindows(data, items, base, seed=0)[k]
        moved = AVWindows(data, items, replace(base, sync_jitter_ms=100.0), seed=0)[k]
        assert plain["offset_s"] == 0.0 and moved["sync"] == 1.0 and abs(moved["offset_s"]) <= 0.1
        leads.append(moved["offset_s"])
        # the audio is the clip's from the window's start plus the lead (> 0: heard early), as `shift_window` says
        arrays = data.arrays(items[k][0])
        first = int(np.flatnonzero(np.all(arrays.lip_trajectory == moved["lips"][0], axis=(1, 2)))[0])
        t0 = float(arrays.timestamps[first] - moved["times"][0])
        a0, n = int(round((t0 + moved["offset_s"]) * arrays.sample_rate)), len(moved["audio"])
        if a0 >= 0 and a0 + n <= len(arrays.audio):
            np.testing.assert_array_equal(moved["audio"], arrays.audio[a0 : a0 + n])
            checked += 1
    assert len(set(leads)) == len(leads) > 1 and checked > 0


def test_room_reverb_keeps_length_and_loudness_and_smears_energy_later() -> None:
    """A click heard in the room: same length and RMS, the click still the loudest sample, and a tail whose
    energy decays (more in its first 100 ms than in 300-400 ms); the same rng draws the same room."""
    sr = 16_000
    click = np.zeros(2 * sr, np.float32)
    click[sr // 2] = 1.0
    wet = room_reverb(click, sr, np.random.default_rng(0), rt60_s=(0.4, 0.4), drr_db=(0.0, 0.0))
    assert wet.shape == click.shape and wet.dtype == np.float32
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(click**2)), rel=1e-4)
    assert int(np.argmax(np.abs(wet))) == sr // 2 and np.abs(wet[: sr // 2]).max() < 1e-6  # nothing before it
    early = np.sum(wet[sr // 2 + 1 : sr // 2 + sr // 10] ** 2)
    late = np.sum(wet[sr // 2 + 3 * sr // 10 : sr // 2 + 4 * sr // 10] ** 2)
    assert early > 10 * late > 0
    np.testing.assert_array_equal(wet, room_reverb(click, sr, np.random.default_rng(0), (0.4, 0.4), (0.0, 0.0)))


def test_reverb_changes_a_windows_audio_not_its_targets(tiny_manifest: Path) -> None:
    data, items, _, base = _av_training_windows(tiny_manifest)
    for k, (_, mode) in enumerate(items):
        plain = AVWindows(data, items, base, seed=0)[k]
        roomy = AVWindows(data, items, replace(base, reverb_prob=1.0), seed=0)[k]
        assert roomy["audio"].shape == plain["audio"].shape and not np.array_equal(roomy["audio"], plain["audio"])
        if mode == "av":
            assert roomy["sync"] == plain["sync"] and roomy["offset_s"] == plain["offset_s"]
            np.testing.assert_array_equal(roomy["lips"], plain["lips"])


def test_modality_dropout_keeps_one_modality() -> None:
    present = torch.tensor([[True, True, True, True], [True, False, False, False], [False, True, True, False]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        kept = drop_modalities(present, 0.9, generator)
        assert bool(kept.any(dim=1).all()) and not bool((kept & ~present).any())


# ---- temperature ---------------------------------------------------------------------------------


def test_fit_temperature_undoes_over_and_under_confidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 4000)
    labels = (rng.uniform(size=4000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    for scale in (4.0, 0.5):
        logits = true_logits * scale
        t = fit_temperature(logits, labels)
        assert t == pytest.approx(scale, rel=0.15)
        assert nll(logits, labels, t) < nll(logits, labels) - 0.01


# ---- tiny training runs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_trains_into_a_loadable_trained_bundle(
    trained: tuple[Path, dict[str, TrainResult]], tiny_manifest: Path, name: str
) -> None:
    weights, results = trained
    bundle = load_bundle(weights / name / "t1")
    assert bundle.trained is True and bundle.version == "t1"
    card = (weights / name / "t1" / "card.md").read_text()
    assert f"spectrashield train {name} --manifest {tiny_manifest}" in card
    assert "--preset test --epochs 1" in card and "Wall time" in card and "| train |" in card
    info = json.loads((weights / name / "t1" / "config.json").read_text())["training"]
    assert info["command"] == results[name].command
    assert info["validation"] == json.loads(json.dumps(results[name].metrics))
    for p in bundle.model.parameters():
        assert torch.isfinite(p).all()


def test_branch_validation_scores_are_reported(trained: tuple[Path, dict[str, TrainResult]]) -> None:
    _, results = trained
    triage = results["fast_triage"].metrics
    assert triage["n"] == 3 and 0.0 <= triage["auc"] <= 1.0  # three val videos, one face-blended
    compression = results["compression_resilient"].metrics
    assert compression["n"] == 5 and compression["dae_pairs"] == 1 and compression["recon_error_real"] > 0
    av = results["av_alignment"].metrics
    assert av["sync"]["n"] == 3 and av["sync_vs_audio_400ms_early"]["n"] == 4 and av["spoof"]["n"] == 5
    assert av["offset_mae_ms"] >= 0.0


def test_fusion_temperature_is_fitted_on_val(trained: tuple[Path, dict[str, TrainResult]]) -> None:
    weights, results = trained
    fusion = load_bundle(weights / "fusion" / "t1").model
    metrics = results["fusion"].metrics
    assert float(fusion.temperature) == pytest.approx(metrics["temperature"])
    assert float(fusion.temperature) != 1.0
    assert metrics["val_nll_after"] <= metrics["val_nll_before"] + 1e-9
    assert metrics["fit_files"] == 7  # the fusion split: every file produced some branch output


def test_cli_trains_a_linear_fusion(trained: tuple[Path, dict[str, TrainResult]], tiny_manifest: Path) -> None:
    weights, _ = trained
    argv = ["train", "fusion", "--manifest", str(tiny_manifest), "--version", "lin", "--branch-version", "t1",
            "--weights-dir", str(weights), "--preset", "test", "--epochs", "2", "--device", "cpu", "--no-progress",
            "--fusion-linear"]
    with pytest.raises(SystemExit):  # a usage error before anything trains
        cli_main(argv)
    assert not (weights / "fusion" / "lin").exists()
    assert cli_main([*argv, "--fusion-scalars-only"]) == 0
    card = (weights / "fusion" / "lin" / "card.md").read_text()
    assert "--fusion-linear" in card and "logistic regression" in card
    assert "jointly with the attention path" not in card  # the method section describes the linear model
    config = load_bundle(weights / "fusion" / "lin").config
    assert config.linear_only and dict(config.direct)["av"] == 1  # the sync logit, not the signed offset


def test_cli_train_records_the_exact_command(trained: tuple[Path, dict[str, TrainResult]], tiny_manifest: Path) -> None:
    weights, _ = trained
    argv = ["train", "fusion", "--manifest", str(tiny_manifest), "--version", "t2", "--branch-version", "t1",
            "--weights-dir", str(weights), "--preset", "test", "--epochs", "2", "--device", "cpu", "--no-progress",
            "--fusion-visual-peak", "max", "--fusion-input-noise", "0.5"]
    assert cli_main(argv) == 0
    card = (weights / "fusion" / "t2" / "card.md").read_text()
    assert "--fusion-input-noise 0.5" in card and "noise on its inputs" in card
    assert "spectrashield train fusion --manifest" in card and "--epochs 2" in card and "--branch-version t1" in card
    assert "fast_triage/t1" in card  # which branch bundles fusion was fitted on
    assert "--fusion-visual-peak max" in card and "the largest crop logit" in card
    assert load_bundle(weights / "fusion" / "t2").config.visual_peak == "max"
    assert load_bundle(weights / "fusion" / "t1").config.visual_peak == "second"  # the default


def test_cli_train_av_options_are_recorded_and_validated(
    trained: tuple[Path, dict[str, TrainResult]], tiny_manifest: Path
) -> None:
    weights, _ = trained
    argv = ["train", "av_alignment", "--manifest", str(tiny_manifest), "--version", "t3", "--weights-dir",
            str(weights), "--preset", "test", "--epochs", "1", "--device", "cpu", "--no-progress", "--av-freeze", "0.5",
            "--av-sync-jitter", "60", "--av-reverb", "0.5"]
    assert cli_main(argv) == 0
    info = json.loads((weights / "av_alignment" / "t3" / "config.json").read_text())["training"]
    assert info["command"].endswith("--av-freeze 0.5 --av-sync-jitter 60 --av-reverb 0.5")
    frozen = info["validation"]["sync_vs_mouth_frozen_45pct"]
    assert frozen["n"] > 0 and frozen["n"] % 2 == 0 and 0.0 <= frozen["auc"] <= 1.0  # each in-sync val clip twice
    assert 0.0 <= info["validation"]["sync_at_audio_80ms_late"] <= 1.0


def test_cli_delegates_generate_and_adapt(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["generate", "--help"])
    assert exit_info.value.code == 0 and "training.benchmark" in capsys.readouterr().out
    monkeypatch.setitem(cli.DELEGATED, "adapt", ("training.not_written_yet", "adapters"))
    assert cli_main(["adapt", "ffpp"]) == 2
    assert "training.not_written_yet is not available" in capsys.readouterr().err


def test_existing_version_is_never_overwritten_silently(
    trained: tuple[Path, dict[str, TrainResult]], tiny_manifest: Path
) -> None:
    weights, _ = trained
    before = (weights / "fast_triage" / "t1" / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="fast_triage/t1"):
        train_model("fast_triage", tiny_manifest, version="t1", weights_dir=weights, preset="test", progress=False)
    with pytest.raises(FileExistsError):
        train_all(tiny_manifest, "t1", weights_dir=weights, preset="test", progress=False)
    assert (weights / "fast_triage" / "t1" / "manifest.json").read_text() == before


def test_excluded_family_leaves_training_splits_only(tiny_manifest: Path) -> None:
    data = load_manifest_data(tiny_manifest, splits=("train", "test"), exclude_families=["av_shift"], progress=False)
    kept = {(e.split, tuple(e.families)) for e in data.entries}
    assert ("train", ("av_shift",)) not in kept and ("test", ("av_shift",)) in kept
    assert data.excluded == 3


def test_an_excluded_source_leaves_every_split(tiny_manifest: Path) -> None:
    """`fit-ood --hold-out-source` keeps another benchmark's voices out of the statistics, test split included."""
    entries = list(read_manifest(tiny_manifest))
    held = {e.path for e in entries[::3]}
    relabelled = tiny_manifest.parent / "held_sources.jsonl"
    write_manifest((e.model_copy(update={"source": "held"}) if e.path in held else e for e in entries), relabelled)
    data = load_manifest_data(relabelled, splits=("train", "val", "test"), exclude_sources=["held"], progress=False)
    assert {e.path for e in data.entries} == {e.path for e in entries} - held
    assert {e.split for e in entries if e.path in held} >= {"train", "test"}  # the check covers both kinds of split


def test_fit_detail_measures_the_authentic_faces_made_thumbnails(tiny_manifest: Path, capsys) -> None:
    """`spectrashield fit-detail`: the visual stage's face-detail minimums from the train split's authentic faces,
    below what those faces show as they are, and higher for a larger thumbnail."""
    reports = {}
    for side in (32, 64):
        assert cli_main(["fit-detail", "--manifest", str(tiny_manifest), "--side", str(side), "--no-progress"]) == 0
        reports[side] = json.loads(capsys.readouterr().out)
    small, large = reports[32], reports[64]
    assert small["split"] == "train" and small["faces"] == 3  # two real videos and a photo; fakes and audio are not read
    for key in ("min_face_detail", "min_surround_detail"):
        assert 0 < small[key] < large[key]
    assert small["min_face_detail"] < small["as_they_are"]["face_detail_median"]
    assert small["min_surround_detail"] < small["as_they_are"]["surround_detail_median"]


def test_train_all_passes_each_model_its_options(monkeypatch, tmp_path: Path) -> None:
    """`train all` used to drop the per-model options (--av-freeze, --fusion-linear, ...): each step now gets them,
    and `train_model` applies each to its own model only."""
    import training.train as train_module
    from types import SimpleNamespace

    calls: dict[str, dict] = {}

    def fake_train_model(name: str, manifest: Path, **kwargs):
        calls[name] = kwargs
        return SimpleNamespace(path=tmp_path / name, wall_s=0.0, metrics={})

    monkeypatch.setattr(train_module, "train_model", fake_train_model)
    monkeypatch.setattr(train_module, "load_manifest_data", lambda *a, **k: None)
    argv = ["train", "all", "--manifest", str(tmp_path / "m.jsonl"), "--version", "x", "--weights-dir",
            str(tmp_path / "w"), "--preset", "test", "--no-progress", "--fusion-scalars-only", "--fusion-linear",
            "--av-freeze", "0.3", "--fusion-ignore", "triage"]
    assert cli_main(argv) == 0
    assert set(calls) == set(MODEL_NAMES)
    for kwargs in calls.values():
        assert kwargs["fusion_linear"] is True and kwargs["fusion_scalars_only"] is True
        assert kwargs["av_freeze"] == 0.3 and kwargs["fusion_ignore"] == ["triage"]
