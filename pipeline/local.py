"""The pipeline in this process: the stage functions bound to loaded bundles, run by `analyze`.

Training, evaluation, the benchmark and the tests use this; a Serve replica runs the same stage
functions behind a handle. No Ray here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from media.clip import ClipMeta
from models.bundle import LoadedBundle, load_version
from pipeline.analyze import Analysis, StageCalls, analyze
from pipeline.av import run_av_bundle
from pipeline.config import PipelineConfig
from pipeline.decode import decode
from pipeline.fuse import run_fusion
from pipeline.keyframes import ALGORITHM_VERSION, select_keyframes
from pipeline.results import (
    AVResult, BranchResult, Decoded, FusionResult, KeyframeResult, ModelInfo, StageInput, TriageResult, UnknownVersionError,
)
from pipeline.schemas import AnalyzeResponse
from pipeline.table import STAGES
from pipeline.tensors import pick_device
from pipeline.triage import run_triage
from pipeline.verdict import respond
from pipeline.visual import run_visual


def bundle_info(deployment: str, bundle: LoadedBundle) -> ModelInfo:
    return ModelInfo(deployment, f"{bundle.name}/{bundle.version}", bundle.trained, bundle.sha256)


def stage_input_meta(clip: StageInput) -> ClipMeta:
    """A `ClipMeta` for arrays that carry no container metadata (training's cache): what `analyze` reads."""
    meta = getattr(clip, "meta", None)
    if isinstance(meta, ClipMeta):
        return meta
    duration = float(getattr(clip, "duration_s", 0.0))
    return ClipMeta(
        kind=clip.kind, duration_s=duration, native_fps=None, width=0, height=0, rotation=0,
        has_audio=bool(clip.has_audio), has_video=clip.n_frames > 0, face_coverage=float(clip.face_coverage),
        container="", n_frames=clip.n_frames,
    )


@dataclass
class LocalPipeline:
    """Every stage in this process: `run(bytes)` decodes and analyses, `run_clip(arrays)` starts after decoding."""

    config: PipelineConfig
    bundles: dict[str, LoadedBundle]  # bundle name -> loaded bundle ("fusion" may be absent)
    device: str = "cpu"
    infos: dict[str, ModelInfo] = field(default_factory=dict)  # deployment -> ModelInfo

    def __post_init__(self) -> None:
        for stage in STAGES:
            if stage.bundle is not None and stage.bundle in self.bundles:
                self.infos[stage.deployment] = bundle_info(stage.deployment, self.bundles[stage.bundle])
        self.infos["KeyframeSelector"] = ModelInfo("KeyframeSelector", ALGORITHM_VERSION, None)

    @classmethod
    def load(
        cls,
        config: PipelineConfig | None = None,
        versions: str | Mapping[str, str] = "v1",
        *,
        weights_dir: Path | str | None = None,
        device: str | None = None,
        with_fusion: bool = True,
    ) -> LocalPipeline:
        """Load the bundles: one version for all, or bundle name -> version."""
        device = device or pick_device()
        names = [s.bundle for s in STAGES if s.bundle is not None and (with_fusion or s.bundle != "fusion")]
        chosen = {n: versions for n in names} if isinstance(versions, str) else {n: versions[n] for n in names}
        root = Path(weights_dir) if weights_dir is not None else None
        bundles = {n: load_version(n, chosen[n], root=root, device=device) for n in names}
        return cls(config or PipelineConfig(), bundles, device)

    def model(self, bundle: str) -> Any:
        return self.bundles[bundle].model

    @property
    def versions(self) -> dict[str, str]:
        """Bundle name -> "name/version", marked when untrained: what a card or report names."""
        return {n: f"{n}/{b.version}" + ("" if b.trained else " (untrained)") for n, b in self.bundles.items()}

    # ---- the stages, one clip at a time -------------------------------------------------
    def triage(self, clip: StageInput) -> TriageResult:
        return run_triage(self.model("fast_triage"), [clip], self.config.triage, self.device, self.infos["FastTriage"])[0]

    def keyframes(self, clip: StageInput, frame_scores: np.ndarray) -> KeyframeResult:
        return select_keyframes(clip, frame_scores, self.config.keyframes, info=self.infos["KeyframeSelector"])

    def visual(self, clip: StageInput, keyframes: KeyframeResult | None) -> BranchResult:
        bundle = self.bundles["compression_resilient"]
        info = self.infos["CompressionResilient"]
        return run_visual(bundle.model, [clip], [keyframes], self.config.visual, self.device, info, bundle.ood)[0]

    def av(self, clip: StageInput) -> AVResult:
        bundle = self.bundles["av_alignment"]
        return run_av_bundle(bundle, clip, self.config.av, self.device, self.infos["AVAlignment"])

    def fuse(self, branches: list[BranchResult]) -> FusionResult:
        return run_fusion(self.model("fusion"), [branches], self.device, self.infos.get("Fusion"))[0]

    def check_pin(self, deployment: str, pin: str | None) -> None:
        """A pin must name the loaded version (this process serves one version per bundle)."""
        info = self.infos.get(deployment)
        if pin is None or info is None:
            return
        _, _, version = info.version.partition("/")
        if pin not in (version, info.version):
            raise UnknownVersionError(f"{deployment} does not serve version {pin!r}; it serves {version}")

    def calls(self, decoder: Any = None) -> StageCalls:
        """`analyze`'s callables; `decoder(upload) -> Decoded` replaces decoding bytes (e.g. cached arrays)."""

        async def decode_upload(data: Any) -> Decoded:
            if decoder is not None:
                return decoder(data)
            clip = decode(data, self.config.decode)
            return Decoded(clip.meta, clip.n_frames, clip)

        async def triage(clip: Any, pin: str | None) -> TriageResult:
            self.check_pin("FastTriage", pin)
            return self.triage(clip)

        async def keyframes(clip: Any, frame_scores: np.ndarray, motion: Any) -> KeyframeResult:
            return self.keyframes(clip, frame_scores)

        async def visual(clip: Any, kf: KeyframeResult | None, pin: str | None) -> BranchResult:
            self.check_pin("CompressionResilient", pin)
            return self.visual(clip, kf)

        async def av(clip: Any, pin: str | None) -> AVResult:
            self.check_pin("AVAlignment", pin)
            return self.av(clip)

        async def fuse(branches: list[BranchResult], pin: str | None) -> FusionResult:
            self.check_pin("Fusion", pin)
            return self.fuse(branches)

        return StageCalls(decode_upload, triage, keyframes, visual, av, fuse)

    def run(self, data: bytes, **options: Any) -> Analysis:
        """Decode and analyse one upload (`analyze`'s options: honour_early_exit, fuse)."""
        return asyncio.run(analyze(data, self.calls(), **options))

    def run_clip(self, clip: StageInput, **options: Any) -> Analysis:
        """Analyse an already decoded clip (a `Clip` or cached arrays)."""
        decoded = Decoded(stage_input_meta(clip), clip.n_frames, clip)
        return asyncio.run(analyze(clip, self.calls(lambda _: decoded), **options))

    def respond(self, analysis: Analysis, request_id: str = "local", filename: str | None = None) -> AnalyzeResponse:
        return respond(analysis, self.config.verdict, request_id, filename)
