"""Fusion: cross-attention over the modality tokens that ran, gated, temperature-calibrated."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from pydantic import Field
from ray import serve

from deployments.common import BranchResult, FusionResult, Timer, VersionedModel, WeightsConfig, configure_torch_threads


class FusionConfig(WeightsConfig):
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

    def decide(self, p: float) -> tuple[bool, str]:
        cfg = self.config
        is_fake = p >= cfg.decision_threshold
        if abs(p - cfg.decision_threshold) < cfg.uncertain_margin:
            return is_fake, "uncertain"
        return is_fake, "fake" if is_fake else "real"

    def _run(self, bundle, branches: list[BranchResult]) -> FusionResult:
        info = self.weights.info(bundle)
        dims = dict(bundle.config.modalities)
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
            return FusionResult(p, verdict, is_fake, info, status="failed", reason=reason)
        dev = self.weights.device
        names = [name for name, _ in bundle.config.modalities]
        with Timer() as timer, torch.inference_mode():
            feats = {
                m: torch.from_numpy(np.array(ok[m].features if m in ok else np.zeros(d), np.float32)).to(dev).unsqueeze(0)
                for m, d in dims.items()
            }  # each (1, D_m)
            present = torch.tensor([[m in ok for m in names]], device=dev)  # (1, M)
            out = bundle.model(feats, present)
            p = float(out.probability[0])
            gates = out.gate_weights[0].float().cpu().numpy()  # (M,)
        is_fake, verdict = self.decide(p)
        return FusionResult(
            p, verdict, is_fake, info,
            gate_weights={m: round(float(g), 4) for m, g in zip(names, gates)},
            timing_ms=timer.ms,
        )

    async def __call__(self, branches: list[BranchResult], pin: str | None = None) -> FusionResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        return await asyncio.to_thread(self._run, bundle, branches)

    def info(self):
        return self.weights.info()

