"""Late fusion of the branch outputs into one calibrated verdict, tolerant of missing branches.

Images have no audio, audio has no face, triage may exit early: one fusion model serves
every input kind by masking. Each modality's summary vector becomes a token; a gating
network weights the present tokens (a missing one gets exactly zero weight) and a learned
query cross-attends over them. Missing modalities' features are zeroed before anything
reads them, so whatever a caller puts there cannot change the verdict. The logit is divided
by a temperature fitted after training (Guo et al. 2017), stored with the weights.

Beside the attention path, each present modality's leading scalar features (its branch's
logits and summary statistics, `FusionConfig.direct`) feed a linear term: fusion contains a
logistic regression over the branch scores, so with little training data it can fall back
on it instead of overfitting the embeddings, and the attention path learns the rest.

The feature builders below are the contract between the branch deployments and fusion:
they turn branch outputs into fixed-size float32 vectors; `fusion_view` turns each into what one
fusion bundle reads (sizes in `FusionConfig.modalities`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from models.av_alignment import TEST_CONFIG as AV_TEST_CONFIG
from models.av_alignment import AVAlignmentConfig
from models.compression import TEST_CONFIG as COMPRESSION_TEST_CONFIG
from models.compression import CompressionResilientConfig
from models.registry import ARCHITECTURES, MODELS, Architecture

MODALITIES = ("triage", "visual", "av", "audio")
TRIAGE_DIM = 4

ArrayLike = Tensor | np.ndarray | Sequence[float] | float


def modality_dims(compression: CompressionResilientConfig, av: AVAlignmentConfig) -> tuple[tuple[str, int], ...]:
    """(name, feature dim a fusion reads: see `fusion_view`) per modality, in MODALITIES order, for branches
    built from these configs."""
    return (
        ("triage", TRIAGE_DIM),
        ("visual", 3 + compression.embed_dim),
        ("av", 3 + av.d_model),
        ("audio", 1 + av.d_model),
    )


DEFAULT_MODALITIES = modality_dims(CompressionResilientConfig(), AVAlignmentConfig())
# Leading scalar features per modality (see the feature builders below): the linear path's inputs.
DIRECT_FEATURES = (("triage", TRIAGE_DIM), ("visual", 3), ("av", 3), ("audio", 1))
# `visual_features` gives four scalars before the embedding: mean, largest and second-largest crop logit and
# mean reconstruction error. A fusion reads three of them (indices below), by `FusionConfig.visual_peak`.
VISUAL_SCALARS = 4
VISUAL_VIEWS = {"max": (0, 1, 3), "second": (0, 2, 3)}


@dataclass(frozen=True)
class FusionConfig:
    modalities: tuple[tuple[str, int], ...] = DEFAULT_MODALITIES
    d_model: int = 32
    n_heads: int = 4
    gate_hidden: int = 32
    head_hidden: int = 32
    dropout: float = 0.1
    direct: tuple[tuple[str, int], ...] = DIRECT_FEATURES  # (modality, leading scalars) of the linear path
    # Modalities this model does not read: their branch's calibrated P(fake) is combined with the fused
    # one as independent evidence (noisy-OR: fake if any modality is), see `combine_independent`. v2 puts
    # "audio" here: its spoof head learned from real speech, which the talking-face benchmark has none of.
    independent: tuple[str, ...] = ()
    # False: the tokens are built from each modality's leading scalars only (`direct`: its branch's logits and
    # their statistics), never from the branch embeddings. Embeddings of media unlike the training data land
    # anywhere, and a fusion that reads them can answer "fake" when every branch says "real" (measured on
    # the independent generator: fusion v3 called 95 % of its authentic videos fake); scalars cannot.
    read_embeddings: bool = True
    # Modalities this model does not read at all (their branches still run and report). v4 ignores "triage":
    # a fast screening model whose scores on media from elsewhere drift towards "fake" (independent generator:
    # authentic clip logit median +1.0 against -0.4 in distribution); it picks keyframes and exits early.
    ignored: tuple[str, ...] = ()
    # Which crop logit stands for the visual branch's peak beside the mean: "max" (fusions v0-v4) or "second",
    # the second largest (the largest when one crop was scored), so that one frame alone is not evidence. On
    # real talking-head videos one crop among four scores far above the rest (WolfgangLanger_Pexels: mean
    # logit -0.82, max +2.92); fusions that read the max learned from the benchmark that this means a local
    # manipulation and called such videos fake (README, "One frame is not evidence").
    visual_peak: str = "max"
    # True: the verdict is the linear path alone, a logistic regression over the `direct` scalars with one bias
    # per modality present (`presence_bias`); no attention path is built. With ~120 fit files the attention path
    # learned a step (P(fake) 0.99 at an AV sync probability of 0.67, 0.47 at 0.88 with every branch below
    # 0.15), which media from elsewhere cross; a logistic regression's answer moves with each score smoothly and
    # one way. `gate_weights` are then each present modality's share of |weights . its scalars| (biases excluded).
    linear_only: bool = False


def fusion_config_for(
    compression: CompressionResilientConfig | None = None,
    av: AVAlignmentConfig | None = None,
    **overrides: Any,
) -> FusionConfig:
    """A FusionConfig whose modality dims fit the given branch configs (defaults: default presets)."""
    dims = modality_dims(compression or CompressionResilientConfig(), av or AVAlignmentConfig())
    return FusionConfig(modalities=dims, **overrides)


class FusionOutput(NamedTuple):
    logit: Tensor  # (B,) already divided by the temperature
    probability: Tensor  # (B,) sigmoid(logit): calibrated probability of "fake"
    gate_weights: Tensor  # (B, M) in MODALITIES order; exactly 0 for missing modalities


class FusionModel(nn.Module):
    """Modality tokens -> gating + learned-query cross-attention -> temperature-scaled logit."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.names = tuple(name for name, _ in config.modalities)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate modality names in {self.names}")
        d = config.d_model
        direct_k = dict(config.direct)
        if config.visual_peak not in VISUAL_VIEWS:
            raise ValueError(f"visual_peak must be one of {sorted(VISUAL_VIEWS)}, got {config.visual_peak!r}")
        if not config.read_embeddings and set(direct_k) != set(self.names):
            raise ValueError("read_embeddings=False needs direct scalars for every modality")
        self.token_dims = {name: dim if config.read_embeddings else direct_k[name] for name, dim in config.modalities}
        if config.linear_only:
            if set(direct_k) != set(self.names):
                raise ValueError("linear_only needs direct scalars for every modality")
            self.presence_bias = nn.Parameter(torch.zeros(len(self.names)))
        else:
            self.proj = nn.ModuleDict({name: nn.Linear(self.token_dims[name], d) for name in self.names})
            self.modality_embedding = nn.Parameter(torch.randn(len(self.names), d) * 0.02)
            self.gate = nn.Sequential(nn.Linear(d, config.gate_hidden), nn.Tanh(), nn.Linear(config.gate_hidden, 1))
            self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.attention = nn.MultiheadAttention(d, config.n_heads, dropout=config.dropout, batch_first=True)
            self.head = nn.Sequential(
                nn.LayerNorm(2 * d),
                nn.Linear(2 * d, config.head_hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(config.head_hidden, 1),
            )
        dims = dict(config.modalities)
        for name, k in config.direct:
            if name not in dims or not 0 < k <= dims[name]:
                raise ValueError(f"direct feature count {k} for {name!r} does not fit modalities {config.modalities}")
        self.direct = nn.ModuleDict({name: nn.Linear(k, 1, bias=False) for name, k in config.direct})
        self.direct_bias = nn.Parameter(torch.zeros(()))
        # Fitted on held-out data after training; persistent so it ships inside model.safetensors.
        self.register_buffer("temperature", torch.ones(()))

    def set_temperature(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))

    def forward(self, features: Mapping[str, Tensor], present: Tensor) -> FusionOutput:
        """features: name -> (B, dim) (missing ones may be absent); present: (B, M) bool."""
        unknown = sorted(set(features) - set(self.names))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected some of {self.names}")
        present = present.bool()
        if present.ndim != 2 or present.shape[1] != len(self.names):
            raise ValueError(f"present must be (B, {len(self.names)}), got {tuple(present.shape)}")
        if not bool(present.any(dim=1).all()):
            raise ValueError("every sample needs at least one present modality")
        b = present.shape[0]

        linear = self.config.linear_only
        tokens, terms = [], []
        for i, (name, dim) in enumerate(self.config.modalities):
            mask = present[:, i : i + 1]  # (B, 1)
            x = features.get(name)
            if x is None:
                if bool(mask.any()):
                    raise ValueError(f"modality {name!r} is marked present but has no features")
                x = torch.zeros(b, dim, device=present.device)
            if tuple(x.shape) != (b, dim):
                raise ValueError(f"features[{name!r}] must be ({b}, {dim}), got {tuple(x.shape)}")
            x = torch.where(mask, x.float(), 0.0)  # missing values (even NaN) never reach the model
            if not linear:
                tokens.append(self.proj[name](x[:, : self.token_dims[name]]) + self.modality_embedding[i])
            term = torch.zeros(b, device=present.device)
            if name in self.direct:
                k = self.direct[name].in_features
                term = self.direct[name](x[:, :k]).squeeze(-1)  # zero when missing: x is zeroed
            terms.append(term)
        terms = torch.stack(terms, dim=1)  # (B, M)
        direct = self.direct_bias + terms.sum(dim=1)  # (B,)
        if linear:
            # gate weights: each modality's share of what its scores say (|weights . scalars|), not of its bias
            share = terms.abs().masked_fill(~present, 0.0)
            total = share.sum(dim=1, keepdim=True)
            even = present.float() / present.sum(dim=1, keepdim=True)
            gate_weights = torch.where(total > 1e-12, share / total.clamp_min(1e-12), even)
            logit = (direct + (present.float() * self.presence_bias).sum(dim=1)) / self.temperature
            return FusionOutput(logit=logit, probability=torch.sigmoid(logit), gate_weights=gate_weights)
        tokens = torch.stack(tokens, dim=1)  # (B, M, d)

        scores = self.gate(tokens).squeeze(-1).masked_fill(~present, float("-inf"))  # (B, M)
        gate_weights = torch.softmax(scores, dim=-1)  # (B, M), exp(-inf) = 0 exactly
        gated = (gate_weights.unsqueeze(-1) * tokens).sum(dim=1)  # (B, d)
        query = self.query.expand(b, -1, -1)  # (B, 1, d)
        attended, _ = self.attention(query, tokens, tokens, key_padding_mask=~present, need_weights=False)
        raw = self.head(torch.cat([attended.squeeze(1), gated], dim=-1)).squeeze(-1) + direct  # (B,)
        logit = raw / self.temperature
        return FusionOutput(logit=logit, probability=torch.sigmoid(logit), gate_weights=gate_weights)


def build_fusion(config: FusionConfig) -> FusionModel:
    return FusionModel(config)


ARCHITECTURES.register("fusion", Architecture(FusionConfig, build_fusion))

TEST_CONFIG = fusion_config_for(
    COMPRESSION_TEST_CONFIG, AV_TEST_CONFIG, d_model=8, n_heads=2, gate_hidden=8, head_hidden=8
)


@MODELS.register("fusion")
def fusion() -> FusionModel:
    return build_fusion(FusionConfig())


@MODELS.register("fusion_test")
def fusion_test() -> FusionModel:
    return build_fusion(TEST_CONFIG)


def _array(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _scalar(x: ArrayLike) -> float:
    a = _array(x)
    if a.size != 1:
        raise ValueError(f"expected a scalar, got shape {a.shape}")
    return float(a.reshape(()))


def triage_features(clip_logit: ArrayLike, frame_logits: ArrayLike) -> np.ndarray:
    """(4,) [clip logit, mean, max, std of frame logits]; no frames counts as one frame = clip logit."""
    clip = _scalar(clip_logit)
    frames = _array(frame_logits).reshape(-1)
    if frames.size == 0:
        frames = np.array([clip], np.float32)
    return np.array([clip, frames.mean(), frames.max(), frames.std()], np.float32)


def visual_features(logits: ArrayLike, embeddings: ArrayLike, recon_errors: ArrayLike) -> np.ndarray:
    """(4+E,) over K keyframe crops: [mean logit, max logit, second-largest logit (the max when K = 1), mean
    recon error, mean embedding (E,)]. A fusion reads three of the scalars: `fusion_view`."""
    lg = _array(logits).reshape(-1)
    emb = _array(embeddings)
    err = _array(recon_errors).reshape(-1)
    if lg.size == 0 or emb.ndim != 2 or emb.shape[0] != lg.size or err.size != lg.size:
        raise ValueError(
            f"need K >= 1 crops with logits (K,), embeddings (K, E), recon_errors (K,); "
            f"got {lg.shape}, {emb.shape}, {err.shape}"
        )
    top = np.sort(lg)[-2:]
    return np.concatenate([[lg.mean(), top[-1], top[0], err.mean()], emb.mean(axis=0)]).astype(np.float32)


def fusion_view(name: str, features: ArrayLike, config: FusionConfig) -> np.ndarray:
    """One branch's feature vector as the fusion of `config` reads it.

    Visual: [mean, peak, error, embedding] from `visual_features`' [mean, max, second, error, embedding], the
    peak chosen by `config.visual_peak`. Other modalities (and a vector too short to be visual's) as given.
    """
    vec = _array(features).reshape(-1)
    if name != "visual" or vec.size < VISUAL_SCALARS:
        return vec
    return np.concatenate([vec[list(VISUAL_VIEWS[config.visual_peak])], vec[VISUAL_SCALARS:]])


def av_features(
    sync_logit: ArrayLike, offset_ms: ArrayLike, spoof_logit: ArrayLike, embedding: ArrayLike
) -> np.ndarray:
    """(3+E,) [sync logit, offset in SECONDS (so it is O(1) like the rest), spoof logit, embedding]."""
    head = [_scalar(sync_logit), _scalar(offset_ms) / 1000.0, _scalar(spoof_logit)]
    return np.concatenate([head, _array(embedding).reshape(-1)]).astype(np.float32)


def audio_features(spoof_logit: ArrayLike, embedding: ArrayLike) -> np.ndarray:
    """(1+E,) [spoof logit, audio embedding] from `AVAlignmentModel.spoof`."""
    return np.concatenate([[_scalar(spoof_logit)], _array(embedding).reshape(-1)]).astype(np.float32)


def combine_independent(p_fused: float | None, independent: Sequence[float]) -> float:
    """P(fake) when any modality may be manipulated on its own: 1 - prod(1 - p) over the fused
    probability (None: no learned modality ran) and each independent modality's calibrated one."""
    keep = 1.0 if p_fused is None else 1.0 - float(p_fused)
    for p in independent:
        keep *= 1.0 - float(p)
    return 1.0 - keep


def fusion_inputs(
    samples: Sequence[Mapping[str, np.ndarray | None]], config: FusionConfig
) -> tuple[dict[str, Tensor], Tensor]:
    """Batch per-sample feature dicts (absent or None = missing) into FusionModel's inputs.

    Returns features name -> (B, dim) float32 (zeros where missing) and present (B, M) bool.
    """
    names = [name for name, _ in config.modalities]
    features = {name: np.zeros((len(samples), dim), np.float32) for name, dim in config.modalities}
    present = np.zeros((len(samples), len(names)), bool)
    for row, sample in enumerate(samples):
        unknown = sorted(set(sample) - set(names) - set(config.independent) - set(config.ignored))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected some of {names}")
        for col, (name, dim) in enumerate(config.modalities):
            value = sample.get(name)
            if value is None:
                continue
            vec = fusion_view(name, value, config)
            if vec.size != dim:
                raise ValueError(f"{name} features must have {dim} values, got {vec.size}")
            features[name][row] = vec
            present[row, col] = True
    return {k: torch.from_numpy(v) for k, v in features.items()}, torch.from_numpy(present)
