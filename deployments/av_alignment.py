"""AVAlignment: `pipeline.av` behind a handle.

Not `@serve.batch`ed, unlike the other models: clips' audio lengths differ, and padding would
change every answer (the waveform is normalised as a whole, Wav2Vec2's group-norm feature encoder
and the statistics pooling and attention all read the padded samples) unless masks were threaded
through the whole model.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from deployments.batching import resolve
from deployments.weights import VersionedModel
from pipeline.av import run_av_bundle
from pipeline.config import AVConfig, AVDeploymentConfig, stage_part
from pipeline.results import AVResult


@serve.deployment(name="AVAlignment", ray_actor_options={"num_cpus": 0.2})
class AVAlignmentDeployment:
    def __init__(self, weights_dir: str | None = None) -> None:
        self.weights = VersionedModel("AVAlignment", "av_alignment", weights_dir)
        self.reconfigure({})  # serves the default version until a user_config names another

    def reconfigure(self, user_config: dict) -> None:
        config = AVDeploymentConfig.model_validate(user_config or {})
        self.weights.apply(config)
        self.config: AVConfig = stage_part(config, AVConfig)

    async def __call__(self, clip: Any, pin: str | None = None) -> AVResult:
        """`pin` names a served version (primary or canary) for A/B checks; else canary/primary by fraction."""
        bundle = self.weights.choose(pin)
        clip = await resolve(clip)
        return await asyncio.to_thread(
            run_av_bundle, bundle, clip, self.config, self.weights.device, self.weights.info(bundle),
        )

    def info(self):
        return self.weights.info()
