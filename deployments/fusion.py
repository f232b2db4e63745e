"""Fusion: cross-attention over the modality tokens that ran, gated, temperature-calibrated."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field
from ray import serve

from deployments.common import (
    BatchConfig,
    BranchResult,
    FusionResult,
    Timer,
    VersionedModel,
    WeightsConfig,
    answer_batch,
    configure_torch_threads,
    submit,
)


class FusionConfig(WeightsConfig, BatchConfig):
    """user_config of Fusion: weights version and how probabilities become verdicts."""

    decision_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    uncertain_margin: float = Field(0.1, ge=0.0, lt=0.5)  # |p - threshold| below this -> "uncertain"


@serve.deployment(name="Fusion", ray_actor_options={"num_cpus": 0.5})
class FusionDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        configure_torch_threads()
        self.weights = VersionedModel("Fusion", "fusion", weights_dir)
        self.config = FusionConfig()

    def reconfigure(self, user_config: dict) -> None:
        self.config = FusionConfig.model_validate(user_config or {})
        self.weights.apply(self.config)
        self.config.apply_to(self._batched)

    def decide(self, p: float) -> tuple[bool, str]:
        cfg = self.config
        is_fake = p >= cfg.decision_threshold
        if abs(p - cfg.decision_threshold) < cfg.uncertain_margin:
            return is_fake, "uncertain"
        return is_fake, "fake" if is_fake else "real"

    def _run(self, bundle, branches: list[BranchResult]) -> FusionResult:
        return self._run_batch(bundle, [branches])[0]

    def _run_batch(self, bundle, requests: list[list[BranchResult]]) -> list[FusionResult]:
        """One forward pass over every request whose branch features fit this version's sizes."""
        info = self.weights.info(bundle)
        dims = dict(bundle.config.modalities)
        names = [name for name, _ in bundle.config.modalities]
        results: list[FusionResult | None] = [None] * len(requests)
        fused: list[tuple[int, dict[str, BranchResult]]] = []
        for i, branches in enumerate(requests):
            ok = {b.modality: b for b in branches if b.status == "ok" and b.features is not None}
            if not ok:
                raise ValueError("fusion needs at least one modality that ran")
            mismatched = [m for m, b in ok.items() if m not in dims or b.features.shape != (dims[m],)]
            if mismatched:
                # A branch rolled out with a different feature size: answer from the branch scores and say so.
                p = float(np.mean([b.score for b in ok.values()]))
                is_fake, verdict = self.decide(p)
                reason = "feature size mismatch for " + ", ".join(
                    f"{m} ({ok[m].features.shape[0]} != {dims.get(m)})" for m in mismatched
                ) + "; verdict is the mean of branch scores"
                results[i] = FusionResult(p, verdict, is_fake, info, status="failed", reason=reason)
            else:
                fused.append((i, ok))
        if not fused:
            return results
        dev = self.weights.device
        with Timer() as timer, torch.inference_mode():
            feats = {
                m: torch.from_numpy(
                    np.stack([np.asarray(ok[m].features if m in ok else np.zeros(d), np.float32) for _, ok in fused])
                ).to(dev)
                for m, d in dims.items()
            }  # each (B, D_m)
            present = torch.tensor([[m in ok for m in names] for _, ok in fused], device=dev)  # (B, M)
            out = bundle.model(feats, present)
            probabilities = out.probability.float().cpu().numpy()  # (B,)
            gates = out.gate_weights.float().cpu().numpy()  # (B, M)
        for row, (i, _) in enumerate(fused):
            p = float(probabilities[row])
            is_fake, verdict = self.decide(p)
            results[i] = FusionResult(
                p, verdict, is_fake, info,
                gate_weights={m: round(float(g), 4) for m, g in zip(names, gates[row])},
                timing_ms=timer.ms,
            )
        return results

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def _batched(self, bundles: list, requests: list[list[BranchResult]]) -> list:
        return await asyncio.to_thread(answer_batch, self._run_batch, bundles, requests)

    async def __call__(self, branches: list[BranchResult], pin: str | None = None) -> FusionResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await submit(self._batched, self._run_batch, bundle, branches)

    def info(self):
        return self.weights.info()

