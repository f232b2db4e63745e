"""Compression-resilient face-crop detector: RGB stream + SRM noise-residual stream + DAE error.

Re-encoding (social-media JPEG/H.264) wipes out the high-frequency traces most detectors
rely on. Three views that degrade differently are combined:

- an RGB CNN for semantic artefacts (blending seams, asymmetric eyes) that survive compression:
  a small conv stack, or (`rgb_backbone="mobilenet_v2"`) torchvision's MobileNetV2 features,
  initialised from ImageNet weights at training time only (`init_rgb_backbone`); serving
  loads the whole model from the bundle, so nothing is downloaded or read besides it;
- a noise-residual CNN whose first layer is the fixed SRM high-pass bank from steganalysis
  (Fridrich & Kodovsky 2012, used for manipulation detection by Zhou et al. 2018): fixed,
  so training cannot turn it back into a low-pass filter that imitates the RGB stream;
- a denoising autoencoder trained on real faces: generated faces reconstruct differently,
  and its per-image reconstruction error is an extra, detached feature for the head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.common import normalize_image, resize_to
from models.registry import ARCHITECTURES, MODELS, Architecture

# The three classic SRM residual kernels (5x5 "KV", 3x3 second order, 1-D second order).
SRM_KERNELS = (
    (
        (-1, 2, -2, 2, -1),
        (2, -6, 8, -6, 2),
        (-2, 8, -12, 8, -2),
        (2, -6, 8, -6, 2),
        (-1, 2, -2, 2, -1),
    ),
    (
        (0, 0, 0, 0, 0),
        (0, -1, 2, -1, 0),
        (0, 2, -4, 2, 0),
        (0, -1, 2, -1, 0),
        (0, 0, 0, 0, 0),
    ),
    (
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
        (0, 1, -2, 1, 0),
        (0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0),
    ),
)
SRM_SCALES = (1 / 12, 1 / 4, 1 / 2)
RECON_ERROR_EPS = 1e-4
RGB_BACKBONES = ("mobilenet_v2",)


def srm_kernels(in_channels: int = 3) -> Tensor:
    """(3 * in_channels, 1, 5, 5) kernels: every SRM filter applied to every colour channel."""
    bank = torch.tensor(SRM_KERNELS, dtype=torch.float32) * torch.tensor(SRM_SCALES).view(3, 1, 1)
    return bank.unsqueeze(1).repeat(in_channels, 1, 1, 1)  # (3*C, 1, 5, 5)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_stack(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 conv blocks, one per entry of `channels`, ending in global average pooling."""
    layers: list[nn.Module] = []
    for out in channels:
        layers.append(conv_bn_relu(in_channels, out, stride=2))
        in_channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class DenoisingAutoencoderConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # encoder widths; each halves the resolution


class DenoisingAutoencoder(nn.Module):
    """Fully convolutional autoencoder that returns an image the size of its input.

    Trained (by the training loop, which owns the corruption: JPEG, blur, noise) to map
    degraded real faces back to clean ones, so its error is low on real faces.
    """

    def __init__(self, config: DenoisingAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.stride = 2 ** len(config.channels)
        enc: list[nn.Module] = []
        c = 3
        for out in config.channels:
            enc.append(conv_bn_relu(c, out, stride=2))
            c = out
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for out in (*reversed(config.channels[:-1]), config.channels[0]):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_relu(c, out, stride=1)]
            c = out
        self.decoder = nn.Sequential(*dec)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) float in [0, 1] -> reconstruction (B, 3, H, W) in [0, 1]."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.stride, (-w) % self.stride
        z = F.pad(x - 0.5, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x - 0.5
        z = self.decoder(self.encoder(z))  # (B, C, H', W')
        return torch.sigmoid(self.to_rgb(z))[..., :h, :w]  # (B, 3, H, W)


@dataclass(frozen=True)
class CompressionResilientConfig:
    image_size: int = 128  # crops are resized to this; equal to the decoder's face crop, so no resampling
    rgb_channels: tuple[int, ...] = (16, 32, 64, 96)
    noise_channels: tuple[int, ...] = (16, 32, 64, 96)
    srm_threshold: float = 3.0  # residuals (in 0..255 units) are truncated to +-threshold
    embed_dim: int = 64
    dropout: float = 0.2
    dae_size: int = 64  # the DAE sees crops at this side, to keep it cheap
    dae: DenoisingAutoencoderConfig = field(default_factory=DenoisingAutoencoderConfig)
    # None: the conv stack of `rgb_channels`. "mobilenet_v2": torchvision's MobileNetV2 `.features`
    # (at `rgb_width_mult`; its first `rgb_backbone_depth` blocks, None = all 19), pooled and projected
    # to rgb_channels[-1], so the head is unchanged. 14 blocks (up to the 96-channel stride-16 stage)
    # hold 0.54 M of the 2.22 M parameters: the full stack would not fit the repository's weights budget.
    rgb_backbone: str | None = None
    rgb_width_mult: float = 1.0
    rgb_backbone_depth: int | None = None


class PretrainedRGBStream(nn.Module):
    """A torchvision backbone's feature extractor, globally pooled and projected: (B, 3, H, W) -> (B, out)."""

    def __init__(self, backbone: str, out_channels: int, width_mult: float = 1.0, depth: int | None = None) -> None:
        super().__init__()
        if backbone not in RGB_BACKBONES:
            raise ValueError(f"unknown rgb_backbone {backbone!r}; known: {', '.join(RGB_BACKBONES)}")
        # Imported here: torchvision is only needed by models built with a pretrained backbone.
        from torchvision.models import mobilenet_v2

        self.backbone = backbone
        self.width_mult = width_mult
        features = mobilenet_v2(weights=None, width_mult=width_mult).features
        if depth is not None and not 1 <= depth <= len(features):
            raise ValueError(f"rgb_backbone_depth must be in 1..{len(features)}, got {depth}")
        self.features = features[:depth] if depth is not None else features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Linear(self.features[-1].out_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) already normalised with ImageNet mean/std (as the backbone was trained)."""
        return self.project(self.pool(self.features(x)))  # (B, out)


def init_rgb_backbone(model: CompressionResilientDetector, path: str | Path) -> str:
    """Copy ImageNet weights (a torchvision-format state dict file) into the RGB stream; returns its sha256.

    Training-time only. The file must load strictly into torchvision's own model definition (every
    key, every shape), and only then are its `.features` taken; anything else is a ValueError
    (a model without a pretrained stream: TypeError).
    """
    stream = model.rgb_stream
    if not isinstance(stream, PretrainedRGBStream):
        raise TypeError("this model has no pretrained RGB backbone (config.rgb_backbone is None)")
    from torchvision.models import mobilenet_v2

    path = Path(path)
    data = path.read_bytes()
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = mobilenet_v2(weights=None, width_mult=stream.width_mult)
    try:
        reference.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as exc:
        raise ValueError(f"{path}: not a {stream.backbone} state dict (width {stream.width_mult}): {exc}") from exc
    stream.features.load_state_dict(reference.features[: len(stream.features)].state_dict(), strict=True)
    return hashlib.sha256(data).hexdigest()


class CompressionOutput(NamedTuple):
    logit: Tensor  # (B,)
    embedding: Tensor  # (B, E)
    recon_error: Tensor  # (B,) mean squared DAE error per image
    recon: Tensor  # (B, 3, dae_size, dae_size)


class CompressionResilientDetector(nn.Module):
    """Two-stream (RGB + SRM residual) CNN with a DAE reconstruction-error feature."""

    def __init__(self, config: CompressionResilientConfig) -> None:
        super().__init__()
        self.config = config
        # A constant of the method, not a learned or fitted value: kept out of the state dict.
        self.register_buffer("srm", srm_kernels(3), persistent=False)
        if config.rgb_backbone is None:
            self.rgb_stream: nn.Module = conv_stack(3, config.rgb_channels)
        else:
            self.rgb_stream = PretrainedRGBStream(
                config.rgb_backbone, config.rgb_channels[-1], config.rgb_width_mult, config.rgb_backbone_depth
            )
        self.noise_stream = conv_stack(self.srm.shape[0], config.noise_channels)
        self.fuse = nn.Sequential(
            nn.Linear(config.rgb_channels[-1] + config.noise_channels[-1], config.embed_dim),
            nn.GELU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.embed_dim + 1, 1)
        self.dae = DenoisingAutoencoder(config.dae)

    def noise_residual(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> truncated SRM residuals (B, 9, H, W) in [-1, 1]."""
        x = F.pad(images * 255.0, (2, 2, 2, 2), mode="reflect")
        residual = F.conv2d(x, self.srm, groups=images.shape[1])
        t = self.config.srm_threshold
        return residual.clamp(-t, t) / t

    def trunk(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (both streams' features (B, C_rgb + C_noise), the detached DAE
        error feature (B, 1), the DAE's error (B,) and reconstruction): everything below `classify`."""
        size = (self.config.image_size, self.config.image_size)
        x = resize_to(images, size)  # (B, 3, S, S)
        rgb = self.rgb_stream(normalize_image(x))  # (B, C_rgb)
        noise = self.noise_stream(self.noise_residual(x))  # (B, C_noise)
        small = resize_to(images, (self.config.dae_size, self.config.dae_size))  # (B, 3, s, s)
        recon = self.dae(small)  # (B, 3, s, s)
        recon_error = (recon - small).pow(2).mean(dim=(1, 2, 3))  # (B,)
        # Detached: the head must not push the DAE to reconstruct fakes badly on purpose.
        error_feature = torch.log(recon_error.detach() + RECON_ERROR_EPS).unsqueeze(-1)  # (B, 1)
        return torch.cat([rgb, noise], dim=-1), error_feature, recon_error, recon

    def classify(self, streams: Tensor, error_feature: Tensor) -> tuple[Tensor, Tensor]:
        """The trunk's features -> (fake logit (B,), embedding (B, E)); what a continual update retrains."""
        embedding = self.fuse(streams)  # (B, E)
        logit = self.head(torch.cat([self.dropout(embedding), error_feature], dim=-1)).squeeze(-1)
        return logit, embedding

    def forward(self, images: Tensor) -> CompressionOutput:
        """images: (B, 3, H, W) float in [0, 1], any H, W."""
        streams, error_feature, recon_error, recon = self.trunk(images)
        logit, embedding = self.classify(streams, error_feature)
        return CompressionOutput(logit=logit, embedding=embedding, recon_error=recon_error, recon=recon)


def build_denoising_autoencoder(config: DenoisingAutoencoderConfig) -> DenoisingAutoencoder:
    return DenoisingAutoencoder(config)


def build_compression_resilient(config: CompressionResilientConfig) -> CompressionResilientDetector:
    return CompressionResilientDetector(config)


ARCHITECTURES.register("denoising_autoencoder", Architecture(DenoisingAutoencoderConfig, build_denoising_autoencoder))
ARCHITECTURES.register("compression_resilient", Architecture(CompressionResilientConfig, build_compression_resilient))

DAE_TEST_CONFIG = DenoisingAutoencoderConfig(channels=(4, 8))
TEST_CONFIG = CompressionResilientConfig(
    image_size=32,
    rgb_channels=(4, 8),
    noise_channels=(4, 8),
    embed_dim=8,
    dae_size=16,
    dae=DAE_TEST_CONFIG,
)
MOBILENET_CONFIG = CompressionResilientConfig(rgb_backbone="mobilenet_v2", rgb_backbone_depth=14)
# 64 px, not 32: at 1x1 feature maps the last blocks' BatchNorm biases get exactly zero gradient.
MOBILENET_TEST_CONFIG = replace(TEST_CONFIG, image_size=64, rgb_backbone="mobilenet_v2", rgb_width_mult=0.25)


@MODELS.register("denoising_autoencoder")
def denoising_autoencoder() -> DenoisingAutoencoder:
    return build_denoising_autoencoder(DenoisingAutoencoderConfig())


@MODELS.register("denoising_autoencoder_test")
def denoising_autoencoder_test() -> DenoisingAutoencoder:
    return build_denoising_autoencoder(DAE_TEST_CONFIG)


@MODELS.register("compression_resilient")
def compression_resilient() -> CompressionResilientDetector:
    return build_compression_resilient(CompressionResilientConfig())


@MODELS.register("compression_resilient_test")
def compression_resilient_test() -> CompressionResilientDetector:
    return build_compression_resilient(TEST_CONFIG)


@MODELS.register("compression_resilient_mobilenet")
def compression_resilient_mobilenet() -> CompressionResilientDetector:
    return build_compression_resilient(MOBILENET_CONFIG)


@MODELS.register("compression_resilient_mobilenet_test")
def compression_resilient_mobilenet_test() -> CompressionResilientDetector:
    return build_compression_resilient(MOBILENET_TEST_CONFIG)
