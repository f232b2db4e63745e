"""AVAlignmentModel: audio-only spoof path, absolute time, short audio, local Wav2Vec2 weights."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from models import MODELS, AVAlignmentModel, build_av_alignment, load_bundle, save_bundle
from models.av_alignment import SyncCorrelation, frame_log_energy, TEST_CONFIG, time_encoding


@pytest.fixture
def model() -> AVAlignmentModel:
    torch.manual_seed(0)
    return MODELS.get("av_alignment_test")().eval()


def visual_inputs(batch: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lips = torch.randn(batch, t, 20, 2, generator=g) * 0.3
    mouths = torch.rand(batch, t, 48, 96, generator=g)
    times = torch.arange(t, dtype=torch.float32).expand(batch, t) / 25.0
    return lips, mouths, times


def test_spoof_is_audio_only(model: AVAlignmentModel) -> None:
    audio = torch.randn(2, 12000) * 0.1
    with torch.no_grad():
        alone = model.spoof(audio)
        a = model(audio, *visual_inputs(2, 8, seed=0))
        b = model(audio, *visual_inputs(2, 8, seed=1))
    torch.testing.assert_close(a.spoof_logit, alone.spoof_logit)
    torch.testing.assert_close(b.spoof_logit, alone.spoof_logit)
    assert not torch.allclose(a.sync_logit, b.sync_logit)  # the visual input does reach the sync head
    assert alone.embedding.shape == (2, TEST_CONFIG.d_model)


def test_absolute_time_matters(model: AVAlignmentModel) -> None:
    audio = torch.randn(1, 16000) * 0.1
    lips, mouths, times = visual_inputs(1, 8, seed=0)
    with torch.no_grad():
        aligned = model(audio, lips, mouths, times)
        shifted = model(audio, lips, mouths, times + 0.5)
    assert not torch.allclose(aligned.sync_logit, shifted.sync_logit)


def test_time_encoding_distinguishes_frames() -> None:
    enc = time_encoding(torch.tensor([0.0, 0.04, 10.0, 60.0]), 16, 0.04, 200.0)
    assert enc.shape == (4, 16) and torch.isfinite(enc).all()
    assert torch.cdist(enc, enc).fill_diagonal_(1.0).min() > 0.1


@pytest.mark.parametrize("n_samples", [0, 1, 50, 399, 400])
def test_short_audio_is_padded(model: AVAlignmentModel, n_samples: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(1, n_samples) * 0.1, *visual_inputs(1, 3, seed=0))
        spoof = model.spoof(torch.randn(1, n_samples) * 0.1)
    assert all(torch.isfinite(t).all() for t in (*out, *spoof))


def test_audio_frame_times_follow_the_stride() -> None:
    torch.manual_seed(0)
    av = MODELS.get("av_alignment")().eval()
    with torch.no_grad():
        hidden, times = av.encode_audio(torch.randn(1, 16000))
    assert av.audio_stride == 320 and av.min_samples == 400
    assert hidden.shape[1] == times.shape[0] == 49  # wav2vec2: 20 ms hop, 25 ms window
    torch.testing.assert_close(times[1] - times[0], torch.tensor(0.02))
    torch.testing.assert_close(times[0], torch.tensor(199.5 / 16000))


def test_offset_is_bounded(model: AVAlignmentModel) -> None:
    with torch.no_grad():
        model.sync.lag_net[-1].weight.normal_(0.0, 1e4)  # scores so extreme the softmax is one-hot
        out = model(torch.randn(1, 8000), *visual_inputs(1, 4, seed=0))
    assert out.offset_ms.abs().max() <= TEST_CONFIG.max_offset_ms + 1e-3


def test_lag_search_finds_a_known_lead() -> None:
    """The parameter-free channel pair (audio energy vs mouth aperture) peaks at the true lead: a
    mouth that opens exactly when bursts of noise are heard 300 ms later has its best lead at -300 ms."""
    torch.manual_seed(0)
    sync = SyncCorrelation(audio_dim=4, visual_dim=4, config=TEST_CONFIG)
    sr, fps, seconds = 16000, 25, 4.0
    frame_times = torch.arange(int(seconds * fps)).float() / fps  # (T,)
    open_ = (torch.rand(len(frame_times)) > 0.6).float()  # mouth open on random frames
    audio = torch.full((int(seconds * sr),), 1e-3)
    for t in frame_times[open_ > 0]:
        start = int((float(t) + 0.3) * sr)  # heard 300 ms late
        audio[start : start + sr // fps] = torch.randn(len(audio[start : start + sr // fps]))
    energy = frame_log_energy(audio[None], 400, 320)  # (1, L)
    times = (torch.arange(energy.shape[1]).float() * 320 + 199.5) / sr
    with torch.no_grad():
        curve = sync.curve(
            torch.zeros(1, energy.shape[1], 4), energy, times, 0.02,
            torch.zeros(1, len(frame_times), 4), open_[None], frame_times[None],
        )  # (1, K, C)
    fixed = curve[0, :, -1]
    assert float(sync.leads_s[int(fixed.argmax())]) == pytest.approx(-0.3, abs=0.021)
    assert float(fixed.max()) > 0.8 and float(fixed[sync.zero_lead]) < 0.3


def tiny_wav2vec2(directory: Path) -> Wav2Vec2Model:
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=[8, 8],
        conv_kernel=[10, 3],
        conv_stride=[5, 2],
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(123)
    encoder = Wav2Vec2Model(config)
    encoder.save_pretrained(directory)
    return encoder


def test_loads_wav2vec2_from_local_directory(tmp_path: Path) -> None:
    saved = tiny_wav2vec2(tmp_path / "w2v")
    config = replace(TEST_CONFIG, pretrained_dir=str(tmp_path / "w2v"))
    torch.manual_seed(0)
    model = build_av_alignment(config).eval()
    ours, theirs = model.audio_encoder.state_dict(), saved.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    assert model.audio_stride == 10 and model.min_samples == 10 + 2 * 5

    audio = torch.randn(1, 4000) * 0.1
    visual = visual_inputs(1, 4, seed=0)
    with torch.no_grad():
        expected = model(audio, *visual)

    with pytest.raises(ValueError, match="portable_config"):
        save_bundle(
            model, tmp_path / "bundle" / "v1", arch="av_alignment", config=model.config, trained=False, card_text="x"
        )
    save_bundle(
        model,
        tmp_path / "bundle" / "v1",
        arch="av_alignment",
        config=model.portable_config(),
        trained=False,
        card_text="x",
    )
    shutil.rmtree(tmp_path / "w2v")  # the bundle must not need the original directory
    loaded = load_bundle(tmp_path / "bundle" / "v1")
    assert loaded.config.pretrained_dir is None and loaded.config.wav2vec2_config["hidden_size"] == 16
    with torch.no_grad():
        got = loaded.model(audio, *visual)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b)


def test_missing_local_directory_fails_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = replace(TEST_CONFIG, pretrained_dir=str(tmp_path / "does-not-exist"))
    with pytest.raises(OSError):
        build_av_alignment(config)


def test_no_video_frames(model: AVAlignmentModel) -> None:
    """T = 0 (no sampled frames) still runs: the CLS token then reads audio alone."""
    with torch.no_grad():
        out = model(torch.randn(1, 8000), torch.zeros(1, 0, 20, 2), torch.zeros(1, 0, 48, 96), torch.zeros(1, 0))
    assert all(torch.isfinite(t).all() for t in out)
