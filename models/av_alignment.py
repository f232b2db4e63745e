"""Audio-visual alignment: does the mouth move with the voice, and is the voice itself synthetic?

Lip-sync deepfakes and dubbed voices keep faces photoreal but break the timing between
phonemes and mouth shapes. Audio frames come from a Wav2Vec2 encoder (our own small config
by default, or a local `from_pretrained` directory); visual frames from the lip-landmark
trajectory plus a small CNN on the grey mouth crop. One transformer reads both sequences
together, each token tagged with its modality and a sinusoidal encoding of its ABSOLUTE time
in seconds, so audio and video frames at different rates meet on a common clock; its CLS
token is the joint embedding.

Sync and offset come mainly from an explicit lag search (SyncNet's idea, made differentiable):
a few learned audio channels plus the log energy of each audio frame, and as many learned
visual channels plus the mouth aperture of each video frame, are correlated (Pearson, over
time) with the audio sampled at every candidate lead in +-`sync_max_lag_s`. A small 1-D
network over the lag axis scores each lead: the softmax-weighted lead is the offset estimate,
and the correlation at lead 0 against the best lead feeds the sync logit. This is what lets
the model learn lip sync from hundreds of clips instead of millions.

The spoof (synthetic voice) head reads the audio encoder alone, so audio-only uploads get
the same score as the audio track of a video, whatever the face does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # transformers is imported where an encoder is built: only the AV replica pays for it
    from transformers import Wav2Vec2Config, Wav2Vec2Model

from models.common import resize_to
from models.registry import ARCHITECTURES, MODELS, Architecture
from models.spoof import SpectralSpoofConfig, SpectralSpoofNet

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class AVAlignmentConfig:
    # Audio encoder: our own small Wav2Vec2 unless `pretrained_dir` / `wav2vec2_config` is set.
    audio_hidden: int = 64
    audio_layers: int = 2
    audio_heads: int = 4
    audio_intermediate: int = 128
    audio_conv_dim: tuple[int, ...] = (32, 32, 32, 32, 32, 32, 32)
    audio_conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)  # wav2vec2's: 25 ms window
    audio_conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # wav2vec2's: 20 ms hop
    audio_pos_conv_kernel: int = 32
    audio_pos_conv_groups: int = 4
    pretrained_dir: str | None = None  # local Wav2Vec2 `save_pretrained` directory; never the hub
    wav2vec2_config: dict[str, Any] | None = None  # a full Wav2Vec2Config dict; bundles use this
    sample_rate: int = SAMPLE_RATE
    # Visual encoder.
    n_lip_points: int = 20
    mouth_size: tuple[int, int] = (48, 96)  # (height, width) of the grey mouth crop
    mouth_channels: tuple[int, ...] = (8, 16, 32)
    # Joint transformer.
    d_model: int = 64  # also the size of both embeddings
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1
    time_min_period_s: float = 0.04  # shortest period of the time encoding: one frame at 25 fps
    time_max_period_s: float = 200.0  # longest: longer than any clip we accept
    max_offset_ms: float = 1000.0  # the lag search spans +-this (the offset estimate cannot leave it)
    sync_channels: int = 8  # learned audio/visual channel pairs correlated across leads
    sync_lag_step_ms: float = 40.0  # lead grid step (one 25 fps frame; audio frames are 20 ms)
    sync_hidden: int = 32
    # The spoof head: None = statistics pooling over the Wav2Vec2 frames (v1); a SpectralSpoofConfig =
    # a separate band-limited log-mel CNN (models.spoof) trained on real speech and real TTS (v2).
    spoof_net: SpectralSpoofConfig | None = None
    # A second spoof head for another kind of speech (v5: real speakers and real TTS), consulted only where
    # the first abstains as out of distribution and this one's own tests pass (`pipeline.av.run_av`).
    speech_expert: SpectralSpoofConfig | None = None


class AVOutput(NamedTuple):
    sync_logit: Tensor  # (B,) > 0 means audio and lips are in sync
    offset_ms: Tensor  # (B,) estimated A/V offset in [-max_offset_ms, max_offset_ms]; > 0: the audio is heard early (leads the lips)
    embedding: Tensor  # (B, E) joint CLS embedding
    spoof_logit: Tensor  # (B,) > 0 means synthetic voice; from audio alone


class SpoofOutput(NamedTuple):
    spoof_logit: Tensor  # (B,)
    embedding: Tensor  # (B, E) audio-only embedding


def small_wav2vec2_config(config: AVAlignmentConfig) -> Wav2Vec2Config:
    """Our own Wav2Vec2 config; spec-augment and layerdrop off so every weight trains every step."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=config.audio_hidden,
        num_hidden_layers=config.audio_layers,
        num_attention_heads=config.audio_heads,
        intermediate_size=config.audio_intermediate,
        conv_dim=list(config.audio_conv_dim),
        conv_kernel=list(config.audio_conv_kernel),
        conv_stride=list(config.audio_conv_stride),
        num_feat_extract_layers=len(config.audio_conv_dim),
        num_conv_pos_embeddings=config.audio_pos_conv_kernel,
        num_conv_pos_embedding_groups=config.audio_pos_conv_groups,
        apply_spec_augment=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        layerdrop=0.0,
    )


def build_audio_encoder(config: AVAlignmentConfig) -> Wav2Vec2Model:
    """A local pretrained directory wins, then an embedded config dict, then our small config."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    if config.pretrained_dir is not None:
        return Wav2Vec2Model.from_pretrained(config.pretrained_dir, local_files_only=True, dtype=torch.float32)
    if config.wav2vec2_config is not None:
        return Wav2Vec2Model(Wav2Vec2Config.from_dict(config.wav2vec2_config))
    return Wav2Vec2Model(small_wav2vec2_config(config))


def time_encoding(times: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sinusoids of absolute time: times (...,) seconds -> (..., dim), periods geometric in [min, max]."""
    half = dim // 2
    periods = torch.logspace(
        math.log10(min_period), math.log10(max_period), half, device=times.device, dtype=torch.float32
    )
    angles = times.float().unsqueeze(-1) * (2 * math.pi / periods)  # (..., half)
    return F.pad(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1), (0, dim - 2 * half))


class MouthCNN(nn.Module):
    """Grey mouth crop -> vector: teeth and tongue visibility, which landmarks cannot show."""

    def __init__(self, channels: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 1, h, w) normalized -> (N, out_dim)."""
        return self.proj(self.body(x))


# Inner-lip points 62 (top) and 66 (bottom) within the 20 mouth points 48-67.
_INNER_TOP, _INNER_BOTTOM = 62 - 48, 66 - 48


def mouth_aperture(lips: Tensor) -> Tensor:
    """lips (B, T, 20, 2) in inter-ocular units -> inner-lip opening (B, T); 0 where no face (zeros)."""
    if lips.shape[2] <= _INNER_BOTTOM:
        return lips.new_zeros(lips.shape[:2])
    return torch.linalg.vector_norm(lips[:, :, _INNER_BOTTOM] - lips[:, :, _INNER_TOP], dim=-1)


def frame_log_energy(audio: Tensor, window: int, hop: int) -> Tensor:
    """audio (B, N) -> log mean square per frame (B, L), framed like the Wav2Vec2 feature encoder."""
    if audio.shape[-1] < window:
        audio = F.pad(audio, (0, window - audio.shape[-1]))
    frames = audio.unfold(-1, window, hop)  # (B, L, window)
    return torch.log(frames.pow(2).mean(dim=-1) + 1e-4)


def masked_pearson(x: Tensor, y: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Pearson correlation over dim -2: x, y (..., T, C), mask (..., T, 1) in {0, 1} -> (..., C).

    Fewer than 3 valid samples, or a constant series, give 0 (no evidence either way).
    """
    n = mask.sum(dim=-2)  # (..., 1)
    safe_n = n.clamp_min(1.0)
    xm = x - (x * mask).sum(dim=-2, keepdim=True) / safe_n.unsqueeze(-2)
    ym = y - (y * mask).sum(dim=-2, keepdim=True) / safe_n.unsqueeze(-2)
    cov = (xm * ym * mask).sum(dim=-2)
    var = (xm.pow(2) * mask).sum(dim=-2) * (ym.pow(2) * mask).sum(dim=-2)
    corr = cov / torch.sqrt(var + eps)
    return torch.where(n >= 3, corr, torch.zeros_like(corr))


class SyncCorrelation(nn.Module):
    """Differentiable lag search between audio and visual channel pairs.

    For every lead tau on the grid, audio features are linearly interpolated at times
    (frame time - tau) -- "the audio is heard tau early" -- and correlated with the visual
    features over the frames. Output: sync logit, offset (ms), and a feature vector.
    """

    def __init__(self, audio_dim: int, visual_dim: int, config: AVAlignmentConfig) -> None:
        super().__init__()
        c, h = config.sync_channels, config.sync_hidden
        n_side = int(round(config.max_offset_ms / config.sync_lag_step_ms))
        leads = torch.arange(-n_side, n_side + 1, dtype=torch.float32) * config.sync_lag_step_ms / 1000.0
        self.register_buffer("leads_s", leads, persistent=False)  # derived from the config, not weights
        self.zero_lead = n_side
        self.audio_feat = nn.Linear(audio_dim, c)
        self.visual_feat = nn.Linear(visual_dim, c)
        channels = c + 1  # + the fixed energy / aperture pair
        self.lag_net = nn.Sequential(
            nn.Conv1d(channels, h, 5, padding=2), nn.GELU(), nn.Conv1d(h, 1, 5, padding=2)
        )
        self.features_dim = 2 * channels + 2
        self.sync_mlp = nn.Sequential(nn.Linear(self.features_dim, h), nn.GELU(), nn.Linear(h, 1))

    def curve(
        self, audio_hidden: Tensor, audio_energy: Tensor, audio_times: Tensor, audio_step_s: float,
        visual: Tensor, aperture: Tensor, frame_times: Tensor,
    ) -> Tensor:
        """Correlation per lead and channel pair (B, K, C); the last channel is energy vs aperture.

        audio_hidden (B, L, H), audio_energy (B, L), audio_times (L,) uniform with step
        `audio_step_s`; visual (B, T, d), aperture (B, T), frame_times (B, T) seconds.
        """
        a = torch.cat([self.audio_feat(audio_hidden), audio_energy.unsqueeze(-1)], dim=-1)  # (B, L, C)
        v = torch.cat([self.visual_feat(visual), aperture.unsqueeze(-1)], dim=-1)  # (B, T, C)
        b, length, ch = a.shape
        k, t = len(self.leads_s), v.shape[1]
        when = frame_times.float().unsqueeze(1) - self.leads_s.view(1, k, 1)  # (B, K, T) audio time wanted
        pos = (when - audio_times[0]) / audio_step_s  # fractional audio frame index
        valid = (pos >= 0) & (pos <= length - 1)
        i0 = pos.floor().clamp(0, max(length - 2, 0)).long()
        i1 = (i0 + 1).clamp(max=length - 1)
        w = (pos - i0.float()).clamp(0.0, 1.0).unsqueeze(-1)  # (B, K, T, 1)

        def gather(index: Tensor) -> Tensor:
            flat = index.reshape(b, k * t, 1).expand(-1, -1, ch)
            return a.gather(1, flat).view(b, k, t, ch)

        a_at = (1 - w) * gather(i0) + w * gather(i1)  # (B, K, T, C)
        return masked_pearson(v.unsqueeze(1).expand(-1, k, -1, -1), a_at, valid.unsqueeze(-1).float())

    def forward(
        self, audio_hidden: Tensor, audio_energy: Tensor, audio_times: Tensor, audio_step_s: float,
        visual: Tensor, aperture: Tensor, frame_times: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The inputs of `curve` -> sync logit (B,), offset ms (B,), features (B, F)."""
        corr = self.curve(audio_hidden, audio_energy, audio_times, audio_step_s, visual, aperture, frame_times)
        scores = self.lag_net(corr.transpose(1, 2)).squeeze(1)  # (B, K)
        log_p = torch.log_softmax(scores, dim=-1)
        offset_ms = (log_p.exp() * self.leads_s).sum(dim=-1) * 1000.0  # (B,)
        zero = self.zero_lead
        features = torch.cat(
            [corr[:, zero], corr.amax(dim=1), log_p[:, zero : zero + 1],
             scores[:, zero : zero + 1] - scores.amax(dim=1, keepdim=True)],
            dim=-1,
        )  # (B, F)
        return self.sync_mlp(features).squeeze(-1), offset_ms, features


class AVAlignmentModel(nn.Module):
    """Wav2Vec2 audio frames + lip/mouth frames -> joint transformer -> sync, offset, spoof."""

    def __init__(self, config: AVAlignmentConfig, audio_encoder: Wav2Vec2Model) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = audio_encoder
        w2v = audio_encoder.config
        self.audio_stride = math.prod(w2v.conv_stride)
        receptive = 1
        jump = 1
        for k, s in zip(w2v.conv_kernel, w2v.conv_stride, strict=True):
            receptive += (k - 1) * jump
            jump *= s
        self.min_samples = receptive  # shorter audio is zero-padded to one full frame
        hidden = w2v.hidden_size
        d = config.d_model

        self.audio_proj = nn.Linear(hidden, d)
        if config.spoof_net is None:
            self.spoof_pool = nn.Sequential(nn.Linear(2 * hidden, d), nn.GELU())
            self.spoof_head = nn.Linear(d, 1)
        else:
            self.spoof_net = SpectralSpoofNet(config.spoof_net)
        if config.speech_expert is not None:
            self.speech_expert = SpectralSpoofNet(config.speech_expert)

        lip_in = 2 * config.n_lip_points * 2  # positions and velocities
        self.lip_mlp = nn.Sequential(nn.Linear(lip_in, d), nn.GELU(), nn.Linear(d, d))
        self.mouth_cnn = MouthCNN(config.mouth_channels, d)
        self.visual_proj = nn.Linear(2 * d, d)

        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.modality_embedding = nn.Parameter(torch.zeros(2, d))  # 0 audio, 1 visual
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.modality_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.n_heads, config.ff_dim, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.sync = SyncCorrelation(hidden, d, config)
        self.sync_head = nn.Linear(d, 1)  # the transformer's say, added to the lag search's logit
        self.sync_embed = nn.Linear(self.sync.features_dim, d)

    def portable_config(self) -> AVAlignmentConfig:
        """The config to save in a bundle: embeds the Wav2Vec2 config instead of a local path."""
        if self.config.pretrained_dir is None:
            return self.config
        w2v = json.loads(self.audio_encoder.config.to_json_string(use_diff=False))
        return replace(self.config, pretrained_dir=None, wav2vec2_config=w2v)

    def encode_audio(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """audio (B, N) 16 kHz -> hidden (B, L, H) and the centre time of each frame (L,) seconds."""
        hidden, times, _ = self._encode_audio(audio)
        return hidden, times

    def _encode_audio(self, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As `encode_audio`, plus the log energy of each audio frame (B, L) of the normalized audio."""
        x = audio.float()
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, correction=0) if x.shape[-1] > 0 else torch.ones_like(mean)
        x = (x - mean) / torch.sqrt(var + 1e-7)  # what Wav2Vec2FeatureExtractor(do_normalize) does
        if x.shape[-1] < self.min_samples:
            x = F.pad(x, (0, self.min_samples - x.shape[-1]))
        hidden = self.audio_encoder(input_values=x).last_hidden_state  # (B, L, H)
        index = torch.arange(hidden.shape[1], device=x.device, dtype=torch.float32)
        times = (index * self.audio_stride + (self.min_samples - 1) / 2) / self.config.sample_rate  # (L,)
        energy = frame_log_energy(x, self.min_samples, self.audio_stride)  # (B, L') with L' = L for wav2vec2 framing
        missing = hidden.shape[1] - energy.shape[1]
        if missing > 0:  # a foreign (pretrained) framing: repeat the last frame's energy
            energy = torch.cat([energy, energy[:, -1:].expand(-1, missing)], dim=1)
        return hidden, times, energy[:, : hidden.shape[1]]

    def spoof_from_hidden(self, hidden: Tensor) -> SpoofOutput:
        """Statistics pooling (mean, std over frames) as in x-vector anti-spoofing models."""
        mean = hidden.mean(dim=1)
        std = torch.sqrt(hidden.var(dim=1, correction=0) + 1e-5)
        embedding = self.spoof_pool(torch.cat([mean, std], dim=-1))  # (B, E)
        return SpoofOutput(spoof_logit=self.spoof_head(embedding).squeeze(-1), embedding=embedding)

    def spoof(self, audio: Tensor) -> SpoofOutput:
        """Audio-only uploads: audio (B, N) float 16 kHz -> synthetic-voice logit and embedding."""
        if self.config.spoof_net is not None:
            out = self.spoof_net(audio)
            return SpoofOutput(spoof_logit=out.spoof_logit, embedding=out.embedding)
        hidden, _ = self.encode_audio(audio)
        return self.spoof_from_hidden(hidden)

    def expert_spoof(self, audio: Tensor) -> SpoofOutput | None:
        """The speech expert's synthetic-voice logit and embedding, or None without one."""
        if self.config.speech_expert is None:
            return None
        out = self.speech_expert(audio)
        return SpoofOutput(spoof_logit=out.spoof_logit, embedding=out.embedding)

    def encode_visual(self, lips: Tensor, mouths: Tensor) -> Tensor:
        """lips (B, T, P, 2), mouths (B, T, h, w) in [0, 1] -> visual tokens (B, T, d)."""
        b, t = lips.shape[:2]
        pos = lips.reshape(b, t, lips.shape[2] * lips.shape[3]).float()  # (B, T, 2P)
        vel = torch.diff(pos, dim=1, prepend=pos[:, :1])  # (B, T, 2P), zero at the first frame
        lip_feat = self.lip_mlp(torch.cat([pos, vel], dim=-1))  # (B, T, d)
        m = mouths.reshape(b * t, 1, *mouths.shape[2:]).float()  # (B*T, 1, h, w)
        m = (resize_to(m, self.config.mouth_size) - 0.5) / 0.25
        mouth_feat = self.mouth_cnn(m).view(b, t, self.config.d_model)  # (B, T, d)
        return self.visual_proj(torch.cat([lip_feat, mouth_feat], dim=-1))  # (B, T, d)

    def time_tokens(self, times: Tensor) -> Tensor:
        cfg = self.config
        return time_encoding(times, cfg.d_model, cfg.time_min_period_s, cfg.time_max_period_s)

    def forward(self, audio: Tensor, lips: Tensor, mouths: Tensor, frame_times: Tensor) -> AVOutput:
        """audio (B, N) 16 kHz; lips (B, T, 20, 2); mouths (B, T, 48, 96) in [0, 1]; frame_times (B, T) s."""
        cfg = self.config
        b = audio.shape[0]
        hidden, audio_times, energy = self._encode_audio(audio)  # (B, L, H), (L,), (B, L)
        spoof = self.spoof(audio) if cfg.spoof_net is not None else self.spoof_from_hidden(hidden)

        audio_tokens = self.audio_proj(hidden) + self.modality_embedding[0] + self.time_tokens(audio_times)  # (B, L, d)
        visual = self.encode_visual(lips, mouths)  # (B, T, d)
        visual_tokens = visual + self.modality_embedding[1] + self.time_tokens(frame_times)  # (B, T, d)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), audio_tokens, visual_tokens], dim=1)  # (B, 1+L+T, d)
        cls = self.norm(self.encoder(tokens)[:, 0])  # (B, d)
        sync_logit, offset_ms, sync_features = self.sync(
            hidden, energy, audio_times, self.audio_stride / cfg.sample_rate, visual, mouth_aperture(lips.float()),
            frame_times,
        )
        return AVOutput(
            sync_logit=sync_logit + self.sync_head(cls).squeeze(-1),
            offset_ms=offset_ms,
            embedding=cls + self.sync_embed(sync_features),
            spoof_logit=spoof.spoof_logit,
        )


def build_av_alignment(config: AVAlignmentConfig) -> AVAlignmentModel:
    model = AVAlignmentModel(config, build_audio_encoder(config))
    return model.train()  # from_pretrained returns eval mode; a fresh build is uniformly in training mode


ARCHITECTURES.register("av_alignment", Architecture(AVAlignmentConfig, build_av_alignment))

TEST_CONFIG = AVAlignmentConfig(
    audio_hidden=16,
    audio_layers=1,
    audio_heads=2,
    audio_intermediate=32,
    audio_conv_dim=(8, 8, 8),
    audio_conv_kernel=(10, 4, 4),
    audio_conv_stride=(5, 4, 4),
    audio_pos_conv_kernel=8,
    audio_pos_conv_groups=2,
    mouth_size=(12, 24),
    mouth_channels=(4, 8),
    d_model=16,
    n_heads=2,
    n_layers=1,
    ff_dim=32,
)


@MODELS.register("av_alignment")
def av_alignment() -> AVAlignmentModel:
    return build_av_alignment(AVAlignmentConfig())


@MODELS.register("av_alignment_test")
def av_alignment_test() -> AVAlignmentModel:
    return build_av_alignment(TEST_CONFIG)
