"""The fuse stage: cross-attention over the modality tokens that ran, gated, temperature-calibrated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from models import FusionModel, fusion_inputs, fusion_view
from models.fusion import combine_independent
from pipeline.results import BranchResult, FusionResult, ModelInfo
from pipeline.timing import Timer


def branch_features(branches: Sequence[BranchResult]) -> dict[str, np.ndarray]:
    """Modality -> features of the branches that ran: what Fusion reads."""
    return {b.modality: b.features for b in branches if b.status == "ok" and b.features is not None}


def fusion_batch(
    samples: Sequence[Mapping[str, np.ndarray]], model: FusionModel, device: str = "cpu"
) -> tuple[dict[str, Tensor], Tensor]:
    """Many requests' feature dicts -> FusionModel's inputs on `device` (zeros + present mask where missing)."""
    features, present = fusion_inputs(samples, model.config)
    return {k: v.to(device) for k, v in features.items()}, present.to(device)


def run_fusion(
    model: FusionModel, requests: Sequence[Sequence[BranchResult]], device: str = "cpu", info: ModelInfo | None = None,
) -> list[FusionResult]:
    """One forward pass over every request whose branch features fit this model's sizes.

    A request with a branch of another feature size (a branch rolled out with a different
    embedding) is answered from the mean of its branch scores, marked `failed` with the reason.
    Modalities the model holds `independent` are not read by it: their calibrated scores are
    combined with the fused probability afterwards (noisy-OR), or alone when nothing else ran.
    Modalities it holds `ignored` are not read at all; a request with nothing else is answered
    0.5, `failed` (the verdict stage then abstains).
    """
    independent = model.config.independent
    ignored = model.config.ignored
    dims = dict(model.config.modalities)
    names = [name for name, _ in model.config.modalities]
    results: list[FusionResult | None] = [None] * len(requests)
    fused: list[tuple[int, dict[str, np.ndarray]]] = []
    aside: dict[int, list[float]] = {}
    for i, branches in enumerate(requests):
        every = {b.modality: b for b in branches if b.status == "ok" and b.features is not None}
        if not every:
            raise ValueError("fusion needs at least one modality that ran")
        aside[i] = [every[m].score for m in independent if m in every and every[m].score is not None]
        ok = {m: b for m, b in every.items() if m not in independent and m not in ignored}
        if not ok and not aside[i]:
            results[i] = FusionResult(
                0.5, info, status="failed",
                reason="only " + ", ".join(sorted(every)) + " ran, which this fusion does not read: no verdict",
            )
            continue
        if not ok:
            results[i] = FusionResult(combine_independent(None, aside[i]), info)
            continue
        read = {m: fusion_view(m, b.features, model.config).size for m, b in ok.items()}
        mismatched = [m for m in ok if m not in dims or read[m] != dims[m]]
        if mismatched:
            reason = "feature size mismatch for " + ", ".join(
                f"{m} ({read[m]} != {dims.get(m)})" for m in mismatched
            ) + "; verdict is the mean of branch scores"
            results[i] = FusionResult(float(np.mean([b.score for b in ok.values()])), info, status="failed", reason=reason)
        else:
            fused.append((i, {m: b.features for m, b in ok.items()}))
    if not fused:
        return results
    with Timer() as timer, torch.inference_mode():
        features, present = fusion_batch([f for _, f in fused], model, device)
        out = model(features, present)
        probabilities = out.probability.float().cpu().numpy()  # (B,)
        gates = out.gate_weights.float().cpu().numpy()  # (B, M)
    for row, (i, _) in enumerate(fused):
        results[i] = FusionResult(
            combine_independent(float(probabilities[row]), aside[i]), info,
            gate_weights={m: round(float(g), 4) for m, g in zip(names, gates[row])},
            timing_ms=timer.ms,
        )
    return results
