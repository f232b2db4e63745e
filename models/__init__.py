"""SpectraShield models: pure PyTorch modules, their configs, the registries and weight bundles.

Importing this package registers every preset in MODELS and every architecture in
ARCHITECTURES. It imports torch only (transformers once an AV encoder is built): never Ray,
never `media`.
"""

from models.av_alignment import (
    AVAlignmentConfig,
    AVAlignmentModel,
    AVOutput,
    SpoofOutput,
    build_av_alignment,
)
from models.bundle import (
    BUNDLE_NAMES,
    LoadedBundle,
    WeightsError,
    list_versions,
    load_bundle,
    load_version,
    save_bundle,
    weights_root,
)
from models.compression import (
    CompressionOutput,
    CompressionResilientConfig,
    CompressionResilientDetector,
    DenoisingAutoencoder,
    DenoisingAutoencoderConfig,
    build_compression_resilient,
    build_denoising_autoencoder,
)
from models.fusion import (
    MODALITIES,
    VISUAL_SCALARS,
    FusionConfig,
    FusionModel,
    FusionOutput,
    audio_features,
    av_features,
    build_fusion,
    fusion_config_for,
    fusion_inputs,
    fusion_view,
    modality_dims,
    triage_features,
    visual_features,
)
from models.registry import ARCHITECTURES, MODELS, Architecture, Registry
from models.triage import FastTriage, FastTriageConfig, TriageOutput, build_fast_triage

__all__ = [
    "ARCHITECTURES",
    "BUNDLE_NAMES",
    "MODALITIES",
    "MODELS",
    "VISUAL_SCALARS",
    "AVAlignmentConfig",
    "AVAlignmentModel",
    "AVOutput",
    "Architecture",
    "CompressionOutput",
    "CompressionResilientConfig",
    "CompressionResilientDetector",
    "DenoisingAutoencoder",
    "DenoisingAutoencoderConfig",
    "FastTriage",
    "FastTriageConfig",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "LoadedBundle",
    "Registry",
    "SpoofOutput",
    "TriageOutput",
    "WeightsError",
    "audio_features",
    "av_features",
    "build_av_alignment",
    "build_compression_resilient",
    "build_denoising_autoencoder",
    "build_fast_triage",
    "build_fusion",
    "fusion_config_for",
    "fusion_inputs",
    "fusion_view",
    "list_versions",
    "load_bundle",
    "load_version",
    "modality_dims",
    "save_bundle",
    "triage_features",
    "visual_features",
    "weights_root",
]
