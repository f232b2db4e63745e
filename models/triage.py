"""FastTriage: a cheap CNN-LSTM that scores a whole clip so obvious cases exit early.

It runs on every video frame the decoder samples, so it must stay far cheaper than the
branches it gates: each frame is shrunk to `image_size` and passed through a few
depthwise-separable convolutions (MobileNet style), then an LSTM reads the per-frame
vectors so that flicker between frames counts as evidence.

v2 (`frame_backbone="mobilenet_v2"`) may swap the separable CNN for the first blocks of
torchvision's MobileNetV2 (`models.compression.PretrainedRGBStream`), ImageNet-initialised at
training time only; a config without it builds exactly the v1 network (same state-dict keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common import normalize_image, resize_to
from models.registry import ARCHITECTURES, MODELS, Architecture


@dataclass(frozen=True)
class FastTriageConfig:
    image_size: int = 64  # frames are resized to this square side before the CNN
    stem_channels: int = 16
    block_channels: tuple[int, ...] = (32, 64, 96)  # one stride-2 separable block each
    lstm_hidden: int = 64
    bidirectional: bool = True
    dropout: float = 0.1
    # Optional (v2): None = the stem + separable blocks above. "mobilenet_v2": torchvision's MobileNetV2
    # `.features` at `backbone_width_mult`, its first `backbone_depth` blocks (None = all 19), pooled and
    # projected to block_channels[-1] channels, so the LSTM and heads are unchanged. Stem and blocks are
    # then not built.
    frame_backbone: str | None = None
    backbone_width_mult: float = 1.0
    backbone_depth: int | None = None


class TriageOutput(NamedTuple):
    clip_logit: Tensor  # (B,)
    frame_logits: Tensor  # (B, T)


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 (MobileNetV1): most of the receptive field for few FLOPs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self.bn1(self.depthwise(x)))
        return F.relu6(self.bn2(self.pointwise(x)))


class FastTriage(nn.Module):
    """Per-frame separable CNN + LSTM over time -> clip logit and per-frame logits."""

    def __init__(self, config: FastTriageConfig) -> None:
        super().__init__()
        self.config = config
        if config.frame_backbone is not None:
            # Imported here: only a v2-style config needs torchvision (through models.compression).
            from models.compression import PretrainedRGBStream

            c = config.block_channels[-1]
            self.frame_encoder: nn.Module | None = PretrainedRGBStream(
                config.frame_backbone, c, config.backbone_width_mult, config.backbone_depth
            )
        else:
            self.frame_encoder = None
            c = config.stem_channels
            self.stem = nn.Sequential(
                nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU6(),
            )
            blocks = []
            for out in config.block_channels:
                blocks.append(SeparableBlock(c, out, stride=2))
                c = out
            self.blocks = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(c, config.lstm_hidden, batch_first=True, bidirectional=config.bidirectional)
        seq_dim = config.lstm_hidden * (2 if config.bidirectional else 1)
        self.dropout = nn.Dropout(config.dropout)
        self.frame_head = nn.Linear(seq_dim, 1)
        self.clip_head = nn.Linear(2 * seq_dim, 1)

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> TriageOutput:
        """frames: (B, T, 3, H, W) float in [0, 1], any H, W.

        `lengths` (B,) int, for clips of different lengths padded to T: only each clip's first
        lengths[b] frames are read (see `forward_clips`). Frame logits past lengths[b] are 0.
        """
        b, t = frames.shape[:2]
        if lengths is None:
            return self._sequence_head(self._frame_vectors(frames.reshape(b * t, *frames.shape[2:])).view(b, t, -1))
        if lengths.shape != (b,) or b == 0 or int(lengths.min()) < 1 or int(lengths.max()) > t:
            raise ValueError(f"lengths must be (B,) = ({b},) in [1, {t}], got {tuple(lengths.tolist())}")
        return self.forward_clips([frames[i, : int(n)] for i, n in enumerate(lengths.tolist())])

    def forward_clips(self, clips: Sequence[Tensor]) -> TriageOutput:
        """Several clips of any lengths in one pass: clips[b] is (T_b, 3, H, W) float in [0, 1].

        Each clip scores as it would alone: the CNN runs clip by clip (one tensor of every clip's
        frames is memory-bound on CPU: 400 frames cost 1.8x four runs of 100), the LSTM reads packed
        sequences and the pooling skips the padding. Returns (B,) clip logits and (B, max T_b)
        frame logits, 0 past each clip's length.
        """
        if not clips or any(len(clip) == 0 for clip in clips):
            raise ValueError(f"forward_clips needs at least one clip and a frame in each, got {[len(c) for c in clips]}")
        vectors = [self._frame_vectors(clip) for clip in clips]  # each (T_b, C)
        lengths = torch.tensor([len(v) for v in vectors])
        t = int(lengths.max())
        if bool((lengths == t).all()):  # equal lengths (every clip of 10 s or more): no padding at all
            return self._sequence_head(torch.stack(vectors))
        x = nn.utils.rnn.pad_sequence(vectors, batch_first=True)  # (B, T, C)
        valid = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).to(x.device)  # (B, T)
        return self._sequence_head(x, lengths, valid)

    def _frame_vectors(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, C) per-frame vectors."""
        x = normalize_image(resize_to(x, (self.config.image_size,) * 2))  # (N, 3, S, S)
        if self.frame_encoder is not None:
            return self.frame_encoder(x)  # (N, C): pooled and projected inside
        return self.blocks(self.stem(x)).mean(dim=(2, 3))  # (N, C)

    def _sequence_head(self, x: Tensor, lengths: Tensor | None = None, valid: Tensor | None = None) -> TriageOutput:
        """(B, T, C) frame vectors -> logits; with `lengths` (CPU) and `valid` (B, T), padding is ignored."""
        t = x.shape[1]
        if lengths is None:
            seq, _ = self.lstm(x)  # (B, T, D)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            seq, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=t)
        seq = self.dropout(seq)
        frame_logits = self.frame_head(seq).squeeze(-1)  # (B, T)
        if valid is None:
            pooled = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=-1)  # (B, 2D)
        else:
            frame_logits = frame_logits.masked_fill(~valid, 0.0)
            keep = valid.unsqueeze(-1)  # (B, T, 1)
            mean = seq.masked_fill(~keep, 0.0).sum(dim=1) / keep.sum(dim=1)  # (B, D)
            pooled = torch.cat([mean, seq.masked_fill(~keep, float("-inf")).amax(dim=1)], dim=-1)  # (B, 2D)
        clip_logit = self.clip_head(pooled).squeeze(-1)  # (B,)
        return TriageOutput(clip_logit=clip_logit, frame_logits=frame_logits)


def build_fast_triage(config: FastTriageConfig) -> FastTriage:
    return FastTriage(config)


ARCHITECTURES.register("fast_triage", Architecture(FastTriageConfig, build_fast_triage))

TEST_CONFIG = FastTriageConfig(image_size=32, stem_channels=8, block_channels=(8, 16), lstm_hidden=8)
# v2 candidate: MobileNetV2's first 7 blocks (stride 8, 32 channels, 55 k parameters) at 64 px.
MOBILENET_CONFIG = FastTriageConfig(frame_backbone="mobilenet_v2", backbone_depth=7)
MOBILENET_TEST_CONFIG = replace(TEST_CONFIG, frame_backbone="mobilenet_v2", backbone_width_mult=0.25, backbone_depth=4)


@MODELS.register("fast_triage")
def fast_triage() -> FastTriage:
    return build_fast_triage(FastTriageConfig())


@MODELS.register("fast_triage_test")
def fast_triage_test() -> FastTriage:
    return build_fast_triage(TEST_CONFIG)


@MODELS.register("fast_triage_mobilenet")
def fast_triage_mobilenet() -> FastTriage:
    return build_fast_triage(MOBILENET_CONFIG)


@MODELS.register("fast_triage_mobilenet_test")
def fast_triage_mobilenet_test() -> FastTriage:
    return build_fast_triage(MOBILENET_TEST_CONFIG)
