"""A synthetic-voice detector that hears only what survives a telephone line.

Real spoofed speech reaches us at any sample rate, loudness, with any silence around it; the
cheapest thing a model can learn from a corpus is exactly those differences. So the front end
removes them before any weight sees the audio:

- everything is resampled to `band_rate` (8 kHz: the model hears 0-4 kHz, as on a phone call);
- log-mel frames quieter than the utterance's loudest by more than `speech_floor_db` are
  silence and are masked out of every statistic (leading/trailing and inner pauses alike);
- each mel band's mean over the speech frames is removed (cepstral mean normalization: the
  channel, the microphone and the overall level), and the whole map scaled to unit variance.

A small 2-D CNN over (mel, time), then masked mean+std pooling over the speech frames (the
x-vector recipe), gives the embedding and the logit. The logit is divided by a temperature
fitted on held-out speech (stored with the weights), so sigmoid(logit) is a calibrated P(spoof).
No Ray, no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn


@dataclass(frozen=True)
class SpectralSpoofConfig:
    input_rate: int = 16_000  # what the decoder hands out
    band_rate: int = 8_000  # everything is heard at this rate (telephone band)
    n_fft: int = 256  # 32 ms at 8 kHz
    hop: int = 80  # 10 ms
    scale: str = "linear"  # "linear": every FFT bin (31 Hz apart at 8 kHz), where vocoder and TTS traces sit; "mel"
    n_mels: int = 48  # "mel" only
    f_min: float = 40.0  # "mel" only
    speech_floor_db: float = 35.0
    channels: tuple[int, ...] = (16, 32, 48, 64)
    embed_dim: int = 64
    dropout: float = 0.2


class SpectralSpoofOutput(NamedTuple):
    spoof_logit: Tensor  # (B,) temperature-scaled
    embedding: Tensor  # (B, E)


class SpectralSpoofNet(nn.Module):
    def __init__(self, config: SpectralSpoofConfig) -> None:
        super().__init__()
        self.config = config
        if config.scale == "mel":
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=config.band_rate, n_fft=config.n_fft, hop_length=config.hop, n_mels=config.n_mels,
                f_min=config.f_min, f_max=config.band_rate / 2, power=2.0, center=True,
            )
        elif config.scale == "linear":
            self.mel = torchaudio.transforms.Spectrogram(n_fft=config.n_fft, hop_length=config.hop, power=2.0, center=True)
        else:
            raise ValueError(f"scale must be 'linear' or 'mel', got {config.scale!r}")
        layers: list[nn.Module] = []
        c = 1
        for i, out in enumerate(config.channels):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:  # halve the mel axis; after the first block, time too (20, 40 ms)
                layers.append(nn.MaxPool2d((2, 1) if i == 0 else (2, 2)))
            c = out
        self.cnn = nn.Sequential(*layers)
        self.temporal = nn.Sequential(nn.Conv1d(c, c, 5, padding=2, bias=False), nn.BatchNorm1d(c), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.Linear(2 * c, config.embed_dim), nn.GELU(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.embed_dim, 1)
        self.register_buffer("temperature", torch.ones(()))

    def set_temperature(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))

    def features(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """audio (B, N) at input_rate -> normalized log-mel (B, M, T) and speech-frame mask (B, T)."""
        cfg = self.config
        x = audio.float()
        if cfg.band_rate != cfg.input_rate:
            # A long, early-rolling sinc: nothing above the band leaks or aliases into it.
            x = torchaudio.functional.resample(
                x, cfg.input_rate, cfg.band_rate, lowpass_filter_width=24, rolloff=0.9,
            )
        min_len = cfg.n_fft
        if x.shape[-1] < min_len:
            x = F.pad(x, (0, min_len - x.shape[-1]))
        power = self.mel(x)  # (B, F, T): F = mel bands or FFT bins
        floor = power.amax(dim=(1, 2), keepdim=True) * 1e-8 + 1e-20  # 80 dB under the loudest bin: gain-free
        logmel = 10.0 * torch.log10(power + floor)
        energy = 10.0 * torch.log10(power.sum(dim=1) + floor[:, 0])  # (B, T)
        mask = energy > energy.amax(dim=1, keepdim=True) - cfg.speech_floor_db
        w = mask.unsqueeze(1).float()  # (B, 1, T)
        n = w.sum(dim=-1, keepdim=True).clamp_min(1.0)
        mean = (logmel * w).sum(dim=-1, keepdim=True) / n  # (B, M, 1)
        centred = (logmel - mean) * w
        scale = torch.sqrt((centred**2).sum(dim=(1, 2), keepdim=True) / (n * logmel.shape[1]) + 1e-5)
        return centred / scale, mask

    def forward(self, audio: Tensor) -> SpectralSpoofOutput:
        """audio (B, N) float at input_rate; zero padding is silence and is masked out."""
        feats, mask = self.features(audio)
        h = self.cnn(feats.unsqueeze(1)).mean(dim=2)  # (B, C, T')
        h = self.temporal(h)
        # A pooled frame is speech if any 10 ms frame under it is.
        w = F.adaptive_max_pool1d(mask.unsqueeze(1).float(), h.shape[-1])
        n = w.sum(dim=-1).clamp_min(1.0)  # (B, 1)
        mean = (h * w).sum(dim=-1) / n
        std = torch.sqrt(((h - mean.unsqueeze(-1)) ** 2 * w).sum(dim=-1) / n + 1e-5)
        embedding = self.pool(torch.cat([mean, std], dim=-1))
        logit = self.head(embedding).squeeze(-1) / self.temperature
        return SpectralSpoofOutput(spoof_logit=logit, embedding=embedding)
