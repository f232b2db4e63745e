"""The band-limited spoof net and its trainer, on tiny corpora made here (no Debian packages needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from models import MODELS, load_bundle, save_bundle
from models.spoof import SpectralSpoofConfig, SpectralSpoofNet
from training.manifest import ManifestEntry, ModalityLabels, write_manifest
from training.spoof import (
    Corpus,
    SpoofHParams,
    attach_spoof_net,
    augment,
    codec_roundtrip,
    eer,
    leave_one_out,
    load_corpus,
    score,
    shortcut_baseline,
    telephone,
    train_net,
)

RATE = 16_000
TINY = SpectralSpoofConfig(channels=(4, 8), embed_dim=8)


def _voice(rng: np.random.Generator, seconds: float, spoof: bool) -> np.ndarray:
    """Harmonic 'speech' whose pitch wobbles (bona fide) or stays flat and buzzy (spoof)."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = rng.uniform(90, 220) * (1 + (0.0 if spoof else 0.08) * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    harmonics = sum(np.sin(k * phase) / (k if spoof else k**1.6) for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (0.1 * harmonics * envelope).astype(np.float32)


def _corpus(n: int = 24, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    entries, audio = [], []
    for i in range(n):
        label = i % 2
        speaker = f"s{i % 3}"
        engine = ("e1", "e2")[i // 2 % 2] if label else "bona_fide"
        entries.append(ManifestEntry(
            path=f"{i}.wav", label=label, kind="audio", split=("train", "train", "val", "test")[i // 2 % 4],
            source="test", families=["tts"] if label else [], modality_labels=ModalityLabels(audio=label),
            group=speaker if not label else engine, meta={"speaker": speaker, "engine": engine},
        ))
        audio.append(_voice(rng, rng.uniform(0.8, 1.6), bool(label)))
    return Corpus(entries, audio)


def test_the_net_hears_neither_level_nor_what_lies_above_the_telephone_band() -> None:
    torch.manual_seed(0)
    net = SpectralSpoofNet(TINY).eval()
    rng = np.random.default_rng(1)
    voice = _voice(rng, 1.0, False)
    x = torch.from_numpy(voice + 3e-3 * rng.standard_normal(voice.size).astype(np.float32))[None]  # a real room's floor
    t = torch.arange(x.shape[1]) / RATE
    with torch.inference_mode():
        base = net.features(x)[0]
        quieter = net.features(x * 0.05)[0]
        high_tone = net.features(x + 0.05 * torch.sin(2 * np.pi * 6000 * t))[0]
        low_tone = net.features(x + 0.05 * torch.sin(2 * np.pi * 1000 * t))[0]
        assert torch.allclose(net(x).spoof_logit, net(x * 0.05).spoof_logit, atol=1e-3)
    def loudest_change(other: torch.Tensor) -> float:  # the band that changed most, averaged over time
        return float((base - other).abs().mean(dim=-1).max())

    assert (base - quieter).abs().max() < 1e-3
    assert loudest_change(high_tone) < 0.25 * loudest_change(low_tone)  # 6 kHz is gone after the 8 kHz resample
    assert loudest_change(low_tone) > 0.5  # while 1 kHz is heard


def test_silence_around_speech_is_masked_out() -> None:
    net = SpectralSpoofNet(TINY)
    x = torch.from_numpy(_voice(np.random.default_rng(2), 1.0, False))[None]
    padded = torch.nn.functional.pad(x, (8000, 8000))
    _, mask = net.features(x)
    _, padded_mask = net.features(padded)
    assert mask.float().mean() > 0.8
    assert padded_mask.sum() == pytest.approx(mask.sum(), abs=4)  # the extra second is silence, not speech


def test_augmentation_keeps_audio_bounded_and_varies() -> None:
    rng = np.random.default_rng(0)
    x = _voice(rng, 1.0, False)
    outs = [augment(x, rng) for _ in range(8)]
    # a tape-speed change of 0.85-1.15 may shorten it; silence around it lengthens it
    assert all(o.dtype == np.float32 and np.abs(o).max() <= 1.0 and o.size >= 0.85 * x.size for o in outs)
    assert len({o.size for o in outs}) > 1


@pytest.mark.parametrize("seed", [0, 1, 11])  # these seeds pick AAC, Opus, MP3
def test_a_codec_round_trip_keeps_length_and_the_voice(seed: int) -> None:
    t = np.arange(RATE) / RATE
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = codec_roundtrip(x, np.random.default_rng(seed))
    assert y.dtype == np.float32 and y.size == x.size
    spectrum = np.abs(np.fft.rfft(y[4000:12000]))
    assert abs(np.fft.rfftfreq(8000, 1 / RATE)[spectrum.argmax()] - 440) < 5  # the tone survived
    assert 0.1 < np.sqrt(np.mean(y[4000:12000] ** 2)) < 0.3  # at about its level (0.21 RMS)


@pytest.mark.parametrize("codec", [0, 1, 2, 3])  # G.711 mu-law, A-law, AMR-NB, G.726
def test_a_phone_call_band_limits_and_keeps_the_voice(codec: int) -> None:
    """Two tones, one in the telephone band and one above it: the call keeps the first and drops the second."""
    t = np.arange(RATE) / RATE
    x = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    y = telephone(x, np.random.default_rng(codec), codec)
    assert y.dtype == np.float32 and y.size == x.size and np.isfinite(y).all()
    spectrum = np.abs(np.fft.rfft(y[4000:12000])) ** 2
    freqs = np.fft.rfftfreq(8000, 1 / RATE)
    assert abs(freqs[spectrum.argmax()] - 440) < 5  # the voice band survived
    assert spectrum[freqs > 4200].sum() < 1e-3 * spectrum.sum()  # 8 kHz sampling: nothing above 4 kHz
    assert 0.07 < np.sqrt(np.mean(y[4000:12000] ** 2)) < 0.25  # the 440 Hz tone alone is 0.14 RMS


def test_eer_is_zero_when_separated_and_half_when_random() -> None:
    y = np.array([0] * 50 + [1] * 50)
    assert eer(y, np.arange(100.0)) == 0.0
    assert 0.35 < eer(y, np.random.default_rng(0).random(100)) < 0.65


def test_training_separates_a_learnable_corpus_and_calibrates() -> None:
    corpus = _corpus(32)
    hp = SpoofHParams(epochs=3, batch_size=8, crop_s=1.0, threads=1)
    net, info = train_net(corpus, corpus.where("train"), corpus.where("val"), hp, TINY)
    logits = score(net, corpus, corpus.where("train"), hp)
    assert eer(corpus.labels(corpus.where("train")), logits) <= 0.25
    assert info["temperature"] > 0 and float(net.temperature) == pytest.approx(info["temperature"])
    assert 1 <= info["best_epoch"] <= 3


def test_leave_one_engine_and_speaker_out_hold_the_fold_out_of_training() -> None:
    corpus = _corpus(48)
    hp = SpoofHParams(epochs=1, batch_size=8, crop_s=1.0, threads=1)
    engines = leave_one_out(corpus, hp, "engine", config=TINY)
    assert set(engines["folds"]) == {"e1", "e2"}
    for fold in engines["folds"].values():
        assert fold["n_spoof"] == 12  # every file of the held-out engine, and only those, are the spoofs
    speakers = leave_one_out(corpus, hp, "speaker", min_items=2, config=TINY)
    assert set(speakers["folds"]) == {"s0", "s1", "s2"}
    assert speakers["mean_eer"] is not None


def test_shortcut_baseline_sees_a_duration_shortcut_when_there_is_one() -> None:
    corpus = _corpus(40)
    fair = shortcut_baseline(corpus)
    assert set(fair) == {"all", "speech_s", "file_s", "level_db", "rolloff", "channel_profile"}
    rng = np.random.default_rng(3)
    long_fakes = Corpus(corpus.entries, [
        np.concatenate([a, _voice(rng, 1.5, True)]) if e.label else a for e, a in zip(corpus.entries, corpus.audio)
    ])
    assert shortcut_baseline(long_fakes)["file_s"] >= 0.9


def test_shortcut_baseline_sees_a_recording_chain_shortcut_when_there_is_one() -> None:
    """Spoofs that all came through one telephone-like chain (band-limited, hissing) are separable by the
    channel profile alone, whatever was said."""
    corpus = _corpus(40)
    rng = np.random.default_rng(4)

    def phone(a: np.ndarray) -> np.ndarray:
        low = torchaudio.functional.lowpass_biquad(torch.from_numpy(a.astype(np.float32)), 16_000, 3000.0).numpy()
        return low + 0.01 * rng.standard_normal(a.size).astype(np.float32)

    chained = Corpus(corpus.entries, [phone(a) if e.label else a for e, a in zip(corpus.entries, corpus.audio)])
    assert shortcut_baseline(chained)["channel_profile"] >= 0.9


def test_a_bundle_with_the_new_spoof_head_loads_strictly_and_keeps_the_sync_weights(tmp_path: Path) -> None:
    base_model = MODELS.get("av_alignment_test")()
    base = save_bundle(base_model, tmp_path / "av_alignment" / "v1", arch="av_alignment", config=base_model.config,
                       trained=True, card_text="base")
    net = SpectralSpoofNet(replace(TINY, embed_dim=base_model.config.d_model))
    net.set_temperature(2.0)
    out = attach_spoof_net(base, net, tmp_path / "av_alignment" / "v2", "card", {"spoof_training": {"x": 1}})
    loaded = load_bundle(out)
    assert loaded.config.spoof_net == net.config
    assert torch.equal(loaded.model.sync_head.weight, base_model.sync_head.weight)
    assert float(loaded.model.spoof_net.temperature) == 2.0
    audio = torch.randn(2, 8000) * 0.1
    with torch.inference_mode():
        direct = net.eval()(audio).spoof_logit
        spoof = loaded.model.spoof(audio)
        lips, mouths, times = torch.randn(2, 6, 20, 2), torch.rand(2, 6, 48, 96), torch.arange(6.0).repeat(2, 1) / 12
        joint = loaded.model(audio, lips, mouths, times)
    assert torch.allclose(spoof.spoof_logit, direct, atol=1e-5)
    assert torch.allclose(joint.spoof_logit, direct, atol=1e-5)  # audio-only and video uploads agree
    assert spoof.embedding.shape == (2, base_model.config.d_model)


def test_load_corpus_decodes_like_the_service_and_caches(tmp_path: Path) -> None:
    import wave

    rng = np.random.default_rng(0)
    rows = []
    for i, rate in enumerate((8000, 22050)):
        x = _voice(rng, 0.5, bool(i))
        x = np.interp(np.arange(int(0.5 * rate)) / rate, np.arange(x.size) / RATE, x)
        with wave.open(str(tmp_path / f"{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        rows.append(ManifestEntry(path=f"{i}.wav", label=i, kind="audio", split="train", source="test"))
    rows += [  # a held-out source's speaker, and a vocoder copy of it: both leave with it
        ManifestEntry(path="0.wav", label=0, kind="audio", split="train", source="codec2", meta={"speaker": "morig"}),
        ManifestEntry(path="1.wav", label=1, kind="audio", split="train", source="vocoder:world",
                      families=["vocoder"], meta={"speaker": "morig", "engine": "world"}),
    ]
    write_manifest(rows, tmp_path / "manifest.jsonl")
    held = load_corpus(tmp_path / "manifest.jsonl", hold_out_sources=["codec2"])
    assert [e.source for e in held.entries] == ["test", "test"]
    assert (tmp_path / "decoded-16k-heldout.npz").exists()
    corpus = load_corpus(tmp_path / "manifest.jsonl")
    assert [a.size for a in corpus.audio[:2]] == pytest.approx([8000, 8000], abs=400)  # both at 16 kHz now
    assert len(corpus.entries) == 4
    again = load_corpus(tmp_path / "manifest.jsonl")
    assert (tmp_path / "decoded-16k.npz").exists()
    assert np.allclose(again.audio[0], corpus.audio[0], atol=1e-3)  # float16 cache


def test_channel_transfer_puts_speech_on_the_donors_recording_chain() -> None:
    """A clean voice moved onto a band-limited, noisy donor's chain takes its spectrum and noise floor."""
    from models.channel import channel_profile
    from tests.models.test_channel import _lowpass, _voice
    from training.spoof import ChannelBank

    rng = np.random.default_rng(0)
    donor = _lowpass(_voice(seconds=3.0, seed=1), 2500.0) + 0.02 * rng.standard_normal(48_000).astype(np.float32)
    clean = _voice(seconds=3.0, seed=2)
    bank = ChannelBank([donor])
    moved = bank.transfer(clean, 0)
    assert moved.shape == clean.shape and moved.dtype == np.float32 and np.isfinite(moved).all()
    assert np.abs(moved).max() <= 1.0
    target, before, after = (channel_profile(a) for a in (donor, clean, moved))
    assert np.linalg.norm(after - target) < 0.5 * np.linalg.norm(before - target)
    assert np.array_equal(bank.transfer(clean[:100], 0), clean[:100])  # shorter than one frame: returned as is
