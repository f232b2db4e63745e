"""The synthetic forensic benchmark: determinism, a valid manifest, decodable files, disjoint splits,
and each manipulation family changing what it claims to change (and nothing else)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from media import DecodeConfig, decode_media, default_analyzer
from media.clip import INNER_LIP_BOTTOM, INNER_LIP_TOP
from training.benchmark import (
    AV_OFFSET_RANGE_MS,
    BenchmarkConfig,
    compress_image,
    compress_video,
    generate_benchmark,
    SynthVideo,
    main,
    plan_benchmark,
    sample_visual_edits,
    synthesize_audio,
    synthesize_image,
    synthesize_video,
)
from training.manifest import AUDIO_FAMILIES, AV_FAMILIES, FAMILIES, VISUAL_FAMILIES, read_manifest
from training.synth_audio import SAMPLE_RATE, Voice, frame_envelope
from training.synth_video import (
    ASTRONAUT_LANDMARKS,
    CompressionLevel,
    Subject,
    build_scene,
    decode_video,
    encode_image,
    encode_mp4,
)

FPS = 25
SIZE = (320, 240)
SMALL = dict(n_videos=8, n_images=4, n_audio=4, seed=3, seconds=(2.0, 3.0), progress=False)
NO_FACES = DecodeConfig(analyze_faces=False)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("bench"), **SMALL)


@pytest.fixture(scope="module")
def subject() -> Subject:
    return Subject.sample("test-subject", np.random.default_rng(11))


@pytest.fixture(scope="module")
def voice() -> Voice:
    return Voice.sample(np.random.default_rng(12))


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels `(T, H, W)` that differ between two renders."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 0


def _inside(boxes: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Mask `(T, H, W)` of each frame's box `(T, 4)`, rounded outwards."""
    n, h, w = shape
    mask = np.zeros((n, h, w), bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        rows = slice(max(int(np.floor(y0)), 0), int(np.ceil(y1)) + 1)
        mask[i, rows, max(int(np.floor(x0)), 0) : int(np.ceil(x1)) + 1] = True
    return mask


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ------------------------------------------------------------------ the generated set


def test_manifest_is_valid_and_every_file_decodes_as_its_kind(small_benchmark: Path) -> None:
    entries = list(read_manifest(small_benchmark))
    assert Counter(e.kind for e in entries) == {"video": 8, "image": 4, "audio": 4}
    for e in entries:
        assert not Path(e.path).is_absolute()
        assert e.label == int(bool(e.families)) and set(e.families) <= set(FAMILIES)
        labels = e.modality_labels
        fams = set(e.families)
        if e.kind == "video":
            assert (labels.visual, labels.audio, labels.av) == (
                int(bool(fams & set(VISUAL_FAMILIES))), int(bool(fams & set(AUDIO_FAMILIES))),
                int(bool(fams & set(AV_FAMILIES))),
            )
        elif e.kind == "image":
            assert fams <= {"face_blend", "upsample", "warp"} and labels.audio is None and labels.av is None
            assert labels.visual == e.label
        else:
            assert fams <= set(AUDIO_FAMILIES) and labels.visual is None and labels.av is None
            assert labels.audio == e.label
        data = (small_benchmark.parent / e.path).read_bytes()
        clip = decode_media(data, NO_FACES)
        assert clip.meta.kind == e.kind, e.path
        if e.kind == "video":
            assert clip.meta.has_audio and clip.meta.video_codec == "h264" and clip.meta.audio_codec == "aac"
            assert (clip.meta.width, clip.meta.height) == (e.meta["width"], e.meta["height"])
            assert clip.meta.duration_s == pytest.approx(e.meta["duration_s"], abs=0.1)
            assert 2.0 <= e.meta["duration_s"] <= 3.0
        elif e.kind == "image":
            assert (clip.meta.width, clip.meta.height) == (e.meta["width"], e.meta["height"])
            assert e.path.endswith(".png" if e.compression == "none" else ".jpg")
        else:
            assert len(clip.audio) / SAMPLE_RATE == pytest.approx(e.meta["duration_s"], abs=0.05)
        if e.kind == "video" and "av_shift" in e.families:
            assert AV_OFFSET_RANGE_MS[0] <= abs(e.meta["av_offset_ms"]) <= AV_OFFSET_RANGE_MS[1]


def test_generated_faces_are_found_by_the_decoder(small_benchmark: Path) -> None:
    """The scenes are for face-based detectors: dlib must find the face in a video and a face-crop image."""
    entries = list(read_manifest(small_benchmark))
    video = next(e for e in entries if e.kind == "video" and e.compression == "none")
    clip = decode_media((small_benchmark.parent / video.path).read_bytes())
    assert clip.meta.face_coverage >= 0.9
    for e in (e for e in entries if e.kind == "image"):
        assert decode_media((small_benchmark.parent / e.path).read_bytes()).face_found.all(), e.path


def test_same_seed_gives_identical_benchmark_whatever_the_workers(tmp_path: Path) -> None:
    args = dict(n_videos=2, n_images=1, n_audio=1, seed=5, seconds=(1.0, 1.2), progress=False)
    first = generate_benchmark(tmp_path / "a", **args)
    second = generate_benchmark(tmp_path / "b", workers=2, **args)
    other = generate_benchmark(tmp_path / "c", **{**args, "seed": 6})
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    for e in read_manifest(first):
        a, b = (first.parent / e.path).read_bytes(), (second.parent / e.path).read_bytes()
        if e.kind == "video":
            (fa, aa, _), (fb, ab, _) = decode_video(a), decode_video(b)
            np.testing.assert_array_equal(fa, fb)
            np.testing.assert_array_equal(aa, ab)
        else:
            ca, cb = decode_media(a, NO_FACES), decode_media(b, NO_FACES)
            np.testing.assert_array_equal(ca.frames, cb.frames)
            np.testing.assert_array_equal(ca.audio, cb.audio)


def test_splits_are_disjoint_by_group_and_families_are_balanced() -> None:
    plans = plan_benchmark(BenchmarkConfig(n_videos=400, n_images=200, n_audio=200, seed=0))
    split_of: dict[str, set[str]] = {}
    for p in plans:
        split_of.setdefault(p.group, set()).add(p.split)
    assert all(len(s) == 1 for s in split_of.values())
    counts = Counter(p.split for p in plans)
    for name, fraction in (("train", 0.6), ("val", 0.1), ("fusion", 0.15), ("test", 0.15)):
        assert counts[name] / len(plans) == pytest.approx(fraction, abs=0.03)
    videos = [p for p in plans if p.kind == "video"]
    assert 0.4 <= sum(not p.families for p in videos) / len(videos) <= 0.5
    per_family = Counter(f for p in videos for f in p.families)
    assert all(per_family[f] >= 25 for f in FAMILIES), per_family
    for p in videos:
        assert len(set(p.families) & set(AV_FAMILIES)) <= 1
        if "av_swap" in p.families and p.donor_group is not None:
            assert split_of[p.donor_group] == {p.split} and p.donor_group != p.group
    assert Counter(f for p in plans if p.kind == "image" for f in p.families).keys() <= {"face_blend", "upsample",
                                                                                          "warp"}
    assert any(p.compression.endswith("x2") for p in plans) and any(p.compression == "none" for p in plans)


def test_config_rejects_what_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        BenchmarkConfig(n_videos=1, n_images=0, n_audio=0, splits=(("train", 0.5), ("test", 0.4)))
    with pytest.raises(ValueError, match="compression level"):
        BenchmarkConfig(n_videos=1, n_images=0, n_audio=0, compression_levels=("crf23", "h265"))
    with pytest.raises(ValueError, match="divisible by 4"):
        BenchmarkConfig(n_videos=1, n_images=0, n_audio=0, size=(322, 240))


def test_cli_writes_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--videos", "1", "--images", "1", "--audio", "1", "--seconds", "1", "1",
                 "--no-progress"]) == 0
    assert len(list(read_manifest(tmp_path / "manifest.jsonl"))) == 3
    assert "families" in capsys.readouterr().out


def test_astronaut_landmarks_constant_matches_dlib() -> None:
    track = default_analyzer().analyze(astronaut()[None])
    np.testing.assert_allclose(track.landmarks[0], ASTRONAUT_LANDMARKS, atol=1.0)


# ------------------------------------------------------------------ visual families


@pytest.mark.parametrize("family", ["face_blend", "flicker", "warp", "upsample"])
def test_visual_family_changes_only_the_face_region(family: str, subject: Subject, voice: Voice) -> None:
    authentic = synthesize_video(subject, voice, (), 21, 1.2)
    fake = synthesize_video(subject, voice, (family,), 21, 1.2)
    np.testing.assert_array_equal(authentic.audio, fake.audio)
    changed = _changed(authentic.frames, fake.frames)  # (T, H, W)
    inside = _inside(fake.edit_boxes, changed.shape)
    assert not (changed & ~inside).any(), "pixels changed outside the edited region"
    assert changed.mean(axis=(1, 2)).min() > 0.01  # every frame is edited
    # the edited region is the face, not the frame: at most ~2.5x the jaw-and-brow box
    assert np.all(_box_area(fake.edit_boxes) < 2.5 * _box_area(fake.face_boxes))
    assert np.all(np.isnan(authentic.edit_boxes))


def test_face_blend_visibly_changes_the_face(subject: Subject, voice: Voice) -> None:
    authentic = synthesize_video(subject, voice, (), 22, 0.4)
    fake = synthesize_video(subject, voice, ("face_blend",), 22, 0.4)
    x0, y0, x1, y1 = fake.face_boxes[0].astype(int)
    core = (slice(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4), slice(x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4))
    diff = np.abs(fake.frames[0][core].astype(float) - authentic.frames[0][core])
    assert diff.mean() > 3.0


def test_flicker_is_temporally_inconsistent(subject: Subject, voice: Voice) -> None:
    """Per-frame face brightness relative to the authentic render jumps frame to frame (white, not smooth)."""
    authentic = synthesize_video(subject, voice, (), 23, 1.2)
    fake = synthesize_video(subject, voice, ("flicker",), 23, 1.2)
    ratios = []
    for a, f, (x0, y0, x1, y1) in zip(authentic.frames, fake.frames, fake.face_boxes.astype(int)):
        core = (slice(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4), slice(x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4))
        ratios.append(f[core].astype(float).mean() / a[core].astype(float).mean())
    steps = np.abs(np.diff(ratios))
    assert np.median(steps) > 0.01


def test_warp_moves_the_mouth_against_the_audio(voice: Voice) -> None:
    """A mouth warp changes the mouth differently from frame to frame, uncorrelated with the speech envelope."""
    rng = np.random.default_rng(0)
    subject = Subject.sample("warp-subject", rng)
    seed = next(s for s in range(100) if sample_visual_edits(("warp",), s, 1).warp.target == "mouth")
    authentic = synthesize_video(subject, voice, (), seed, 2.0)
    fake = synthesize_video(subject, voice, ("warp",), seed, 2.0)
    change = np.abs(fake.frames.astype(float) - authentic.frames).mean(axis=(1, 2, 3))  # (T,)
    assert change.std() > 0.2 * change.mean()  # the warp comes and goes
    np.testing.assert_array_equal(authentic.mouth_open, fake.mouth_open)  # lips still driven by the same audio
    assert abs(np.corrcoef(change, authentic.mouth_open)[0, 1]) < 0.6


def _spectral_peak(frames: np.ndarray, boxes: np.ndarray, period: int) -> float:
    """How far the row spectrum of the boxed region peaks at the harmonics m/`period` (m = 1..period/2).

    Per frame, the power at each harmonic is divided by the median power of its neighbour bins;
    the strongest harmonic counts, and the median over frames is returned (about 1: no peak).
    """
    ratios = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes.astype(int)):
        grey = frame[max(y0, 0) : y1, max(x0, 0) : x1].astype(float).mean(axis=-1)
        grey -= grey.mean(axis=1, keepdims=True)
        power = (np.abs(np.fft.rfft(grey, axis=1)) ** 2).mean(axis=0)
        freqs = np.fft.rfftfreq(grey.shape[1])
        best = 0.0
        for m in range(1, period // 2 + 1):
            peak = int(np.argmin(np.abs(freqs - m / period)))
            neighbours = np.r_[power[max(peak - 6, 1) : peak - 1], power[peak + 2 : peak + 7]]
            best = max(best, power[peak] / np.median(neighbours))
        ratios.append(best)
    return float(np.median(ratios))


@pytest.mark.parametrize("factor", [2, 4])
def test_upsample_adds_a_spectral_peak_at_its_period(factor: int, subject: Subject, voice: Voice) -> None:
    seed = next(s for s in range(200) if sample_visual_edits(("upsample",), s, 1).upsample.factor == factor)
    authentic = synthesize_video(subject, voice, (), seed, 0.4)
    fake = synthesize_video(subject, voice, ("upsample",), seed, 0.4)
    assert fake.meta["upsample"]["factor"] == factor
    assert _spectral_peak(authentic.frames, fake.face_boxes, factor) < 3
    assert _spectral_peak(fake.frames, fake.face_boxes, factor) > 20
    # it survives the camera-original encode
    decoded, _, _ = decode_video(encode_mp4(fake.frames, None, FPS))
    assert _spectral_peak(decoded, fake.face_boxes, factor) > 15


def test_images_take_visual_families_only(subject: Subject) -> None:
    with pytest.raises(ValueError, match="images take only"):
        synthesize_image(subject, ("flicker",), 1)
    face = synthesize_image(subject, (), 1, view="face")
    assert face.image.shape == (256, 256, 3)
    blended = synthesize_image(subject, ("face_blend",), 1, view="face")
    changed = _changed(face.image[None], blended.image[None])
    assert changed.any() and not (changed & ~_inside(blended.edit_box[None], changed.shape)).any()


# ------------------------------------------------------------------ audio families


def test_vocoder_changes_the_waveform_but_keeps_duration_and_timing(voice: Voice) -> None:
    authentic = synthesize_audio(voice, (), 31, 2.0).audio
    vocoded = synthesize_audio(voice, ("vocoder",), 31, 2.0)
    assert vocoded.meta["vocoder"]["method"] == "mel64-griffin-lim"
    assert len(vocoded.audio) == len(authentic) == 2 * SAMPLE_RATE
    assert abs(np.corrcoef(authentic, vocoded.audio)[0, 1]) < 0.5  # a different waveform (phase)
    env_a, env_v = frame_envelope(authentic, 50, FPS), frame_envelope(vocoded.audio, 50, FPS)
    assert np.corrcoef(env_a, env_v)[0, 1] > 0.9  # the same words at the same times


def test_splice_replaces_only_the_recorded_segments(voice: Voice) -> None:
    authentic = synthesize_audio(voice, (), 32, 3.0).audio
    spliced = synthesize_audio(voice, ("splice",), 32, 3.0)
    segments = spliced.meta["splice"]["segments"]
    assert 1 <= len(segments) <= 3
    inside = np.zeros(len(authentic), bool)
    for start, end, ratio in segments:
        assert 0.78 <= ratio <= 0.9 or 1.12 <= ratio <= 1.3
        inside[int(round(start * SAMPLE_RATE)) : int(round(end * SAMPLE_RATE))] = True
    np.testing.assert_array_equal(spliced.audio[~inside], authentic[~inside])
    assert np.abs(spliced.audio[inside] - authentic[inside]).mean() > 0.01


# ------------------------------------------------------------------ audio-visual families


def _offset_from_decoded(data: bytes) -> int:
    """Audio lead in ms where the decoded lip opening best matches the decoded audio envelope (+-1 s, 40 ms steps)."""
    clip = decode_media(data, DecodeConfig(analysis_fps=FPS, max_frames=400))
    found = clip.face_found
    assert found.mean() > 0.9
    gap = clip.lip_trajectory[:, INNER_LIP_BOTTOM, 1] - clip.lip_trajectory[:, INNER_LIP_TOP, 1]  # (T,)
    gap = np.where(found, gap - gap[found].mean(), 0.0)
    env = frame_envelope(clip.audio, len(gap), FPS)
    env -= env.mean()
    n = len(gap)
    lags = np.arange(-FPS, FPS + 1)
    # lag L pairs audio at t with lips at t + L: L > 0 means the sound comes first (audio leads)
    scores = [np.dot(env[max(0, -lag) : n - max(0, lag)], gap[max(0, lag) : n - max(0, -lag)]) for lag in lags]
    return int(lags[int(np.argmax(scores))]) * 1000 // FPS


@pytest.fixture(scope="module")
def av_pair(subject: Subject, voice: Voice) -> tuple[SynthVideo, SynthVideo]:
    """The same 3.2 s clip authentic and with `av_shift`."""
    return synthesize_video(subject, voice, (), 41, 3.2), synthesize_video(subject, voice, ("av_shift",), 41, 3.2)


@pytest.mark.parametrize("level", ["none", "crf38_half"])
def test_av_shift_offset_is_where_decoded_lips_and_audio_align(
    level: str, av_pair: tuple[SynthVideo, SynthVideo]
) -> None:
    authentic, shifted = av_pair
    offset = shifted.meta["av_offset_ms"]
    assert AV_OFFSET_RANGE_MS[0] <= abs(offset) <= AV_OFFSET_RANGE_MS[1]
    np.testing.assert_array_equal(authentic.frames, shifted.frames)
    assert abs(_offset_from_decoded(compress_video(encode_mp4(authentic.frames, authentic.audio, FPS), level))) <= 80
    measured = _offset_from_decoded(compress_video(encode_mp4(shifted.frames, shifted.audio, FPS), level))
    assert abs(measured - offset) <= 80, (measured, offset)


@pytest.mark.parametrize("sign", [1, -1])
def test_av_shift_sign_follows_the_convention(sign: int, subject: Subject, voice: Voice) -> None:
    """Positive av_offset_ms = audio leads: the muxed audio is the lip-driving audio moved that much earlier."""
    for seed in range(50):
        clip = synthesize_video(subject, voice, ("av_shift",), seed, 1.0)
        if np.sign(clip.meta["av_offset_ms"]) == sign:
            break
    lips = synthesize_video(subject, voice, (), seed, 1.0).audio
    shift = int(round(abs(clip.meta["av_offset_ms"]) * SAMPLE_RATE / 1000))
    if sign > 0:
        np.testing.assert_array_equal(clip.audio[: len(lips) - shift], lips[shift:])
    else:
        np.testing.assert_array_equal(clip.audio[shift:], lips[: len(lips) - shift])


def test_av_swap_audio_does_not_follow_the_lips(subject: Subject, voice: Voice) -> None:
    authentic = synthesize_video(subject, voice, (), 51, 3.0)
    donor = Voice.sample(np.random.default_rng(9))
    swapped = synthesize_video(subject, voice, ("av_swap",), 51, 3.0, donor_voice=donor)
    n = len(authentic.mouth_open)
    np.testing.assert_array_equal(authentic.mouth_open, swapped.mouth_open)
    assert np.corrcoef(authentic.mouth_open, frame_envelope(authentic.audio, n, FPS))[0, 1] > 0.8
    assert abs(np.corrcoef(swapped.mouth_open, frame_envelope(swapped.audio, n, FPS))[0, 1]) < 0.4


# ------------------------------------------------------------------ compression


def test_compression_levels_shrink_files_and_halve_resolution(subject: Subject, voice: Voice) -> None:
    clip = synthesize_video(subject, voice, (), 61, 1.0)
    original = encode_mp4(clip.frames, clip.audio, FPS)
    sizes = {level: len(compress_video(original, level)) for level in ("none", "crf23", "crf30", "crf38_half")}
    assert sizes["none"] > sizes["crf23"] > sizes["crf30"] > sizes["crf38_half"]
    half = decode_media(compress_video(original, "crf38_half"), NO_FACES)
    assert (half.meta.width, half.meta.height) == (SIZE[0] // 2, SIZE[1] // 2)
    twice = decode_media(compress_video(original, "crf30x2"), NO_FACES)
    assert (twice.meta.width, twice.meta.height) == SIZE and twice.meta.has_audio
    assert twice.meta.duration_s == pytest.approx(1.0, abs=0.1)

    png = encode_image(clip.frames[0], "png")
    jpeg_sizes = [len(compress_image(png, level)) for level in ("none", "crf23", "crf30", "crf38_half")]
    assert jpeg_sizes == sorted(jpeg_sizes, reverse=True) and len(set(jpeg_sizes)) == 4
    small = cv2.imdecode(np.frombuffer(compress_image(png, "crf38_halfx2"), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape[:2] == (SIZE[1] // 2, SIZE[0] // 2)


def test_compression_level_names() -> None:
    assert CompressionLevel.parse("crf38_halfx2") == CompressionLevel("crf38_halfx2", 38, True, 2)
    assert CompressionLevel.parse("none").crf is None
    assert CompressionLevel.parse("crf23").jpeg_quality > CompressionLevel.parse("crf38").jpeg_quality
    for bad in ("crf", "crf99", "c23", "crf23_quarter"):
        with pytest.raises(ValueError):
            CompressionLevel.parse(bad)




def test_mirrored_subject_gets_the_mirrored_composite_mask(subject: Subject) -> None:
    """Mirroring the face mirrors the bust mask (an unmirrored-order polygon once left a band across the eyes)."""
    plain = build_scene(dataclasses.replace(subject, face_flip=False), SIZE)
    mirrored = build_scene(dataclasses.replace(subject, face_flip=True), SIZE)
    assert np.abs(plain.alpha[:, ::-1] - mirrored.alpha).mean() < 0.02
    eyes = mirrored.landmarks[36:48].round().astype(int)  # (12, 2)
    assert mirrored.alpha[eyes[:, 1], eyes[:, 0], 0].min() > 0.99
