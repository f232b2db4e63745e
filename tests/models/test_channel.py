"""The channel profile: what a recording chain did to a voice, measured without any trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio

from models.channel import BANDS, FLOOR_BANDS, PROFILE_SIZE, SAMPLE_RATE, channel_profile


def _voice(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A buzzy voiced sound with syllable-like gaps and a faint noise floor (16 kHz)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    buzz = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE)) * 0.2
    syllables = (np.sin(2 * np.pi * 3.0 * t) > -0.2).astype(np.float64)
    return (buzz * syllables + 1e-3 * rng.standard_normal(t.size)).astype(np.float32)


def _lowpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    x = torch.from_numpy(audio)
    for _ in range(4):  # a steep telephone-like band edge
        x = torchaudio.functional.lowpass_biquad(x, SAMPLE_RATE, cutoff_hz)
    return x.numpy()


def test_shape_and_finite_on_any_input() -> None:
    for audio in (_voice(), np.zeros(SAMPLE_RATE, np.float32), np.zeros(10, np.float32),
                  np.full(800, np.nan, np.float32)):
        profile = channel_profile(audio)
        assert profile.shape == (PROFILE_SIZE,) == (BANDS + FLOOR_BANDS,) and np.isfinite(profile).all()
    with pytest.raises(ValueError, match="16000"):
        channel_profile(_voice(), 8000)


def test_loudness_does_not_move_it() -> None:
    voice = _voice()
    assert np.allclose(channel_profile(voice), channel_profile(voice * 0.05), atol=1e-3)


def test_a_band_limited_chain_and_a_noisy_room_each_show() -> None:
    voice = _voice()
    base = channel_profile(voice)
    narrow = channel_profile(_lowpass(voice, 3400.0))
    high = slice(BANDS - 6, BANDS)  # the mel bands above ~4.5 kHz
    assert (base[high] - narrow[high]).mean() > 20.0  # the spectrum loses its top
    noisy = channel_profile(voice + 0.02 * np.random.default_rng(1).standard_normal(voice.size).astype(np.float32))
    assert (noisy[BANDS:] - base[BANDS:]).mean() > 10.0  # the quiet frames rise towards the speech
    assert np.allclose(channel_profile(_voice(seed=2)), base, atol=1.0)  # another take of the same chain: close
