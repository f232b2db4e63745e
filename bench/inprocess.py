"""The floor and the pipeline in-process: the served stages' own code, called without Ray.

Two numbers per workload, both measured in this process with no Ray running:

- the floor: decoding exactly the frames and audio the pipeline samples (with the face analysis
  the models need, and without it), plus each model's forward pass on exactly the tensors its
  deployment feeds it. Nothing can be faster than this sum on this machine with this code; the
  forward passes are timed on prebuilt tensors, with `training.features`' tensor helpers.
- the pipeline: the deployment classes themselves (`<Deployment>.func_or_class`), reconfigured
  from the same Serve profile, their `_run` methods called in the ingress's order, serially.
  This is what the replicas compute, minus Ray's scheduling, object store and HTTP, so
  served/in-process is the price of serving and in-process/floor the price of the glue
  (tensor conversion, keyframe selection, feature building).

torch runs one intra-op thread here, as every replica does (`configure_torch_threads` rounds the
replica's fractional `num_cpus` up to 1), so the two sides do the same work with the same
threads. On a CUDA machine both the deployments and the floor models use the GPU
(`pick_device`), and every timed forward pass ends with a CUDA synchronize.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.profile import Profile
from deployments.av_alignment import AVAlignmentDeployment, AVResult
from deployments.common import BranchResult, configure_torch_threads, pick_device
from deployments.compression import CompressionResilientDeployment
from deployments.decoder import MediaDecoderDeployment
from deployments.fusion import FusionDeployment, FusionResult
from deployments.keyframes import KeyframeResult, KeyframeSelectorDeployment
from deployments.triage import FastTriageDeployment, TriageResult
from media import Clip, decode_media
from training.features import (
    BranchModels,
    audio_to_tensor,
    fusion_batch,
    images_to_tensor,
    lips_to_tensor,
    load_branch_models,
    mouths_to_tensor,
)

STAGES = ("decode", "triage", "keyframes", "visual", "av", "fusion")


@dataclass
class PipelineRun:
    """One upload through the in-process stages: each stage's output and wall time."""

    clip: Clip
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage -> ms, plus "total"
    triage: TriageResult | None = None
    keyframes: KeyframeResult | None = None
    visual: BranchResult | None = None
    av: AVResult | None = None
    fused: FusionResult | None = None

    @property
    def early_exit(self) -> bool:
        return self.triage is not None and self.triage.early_exit is not None

    def branches(self) -> list[BranchResult]:
        """What the ingress hands to Fusion."""
        found = [self.triage.branch if self.triage else None, self.visual]
        if self.av is not None:
            found += [self.av.av, self.av.audio]
        return [b for b in found if b is not None]


class InProcessGraph:
    """The six compute deployments as plain objects, configured from a Serve profile."""

    def __init__(self, profile: Profile) -> None:
        weights_dir = profile.weights_dir
        self.decoder = MediaDecoderDeployment.func_or_class()
        self.triage = FastTriageDeployment.func_or_class(weights_dir)
        self.keyframes = KeyframeSelectorDeployment.func_or_class()
        self.compression = CompressionResilientDeployment.func_or_class(weights_dir)
        self.av = AVAlignmentDeployment.func_or_class(weights_dir)
        self.fusion = FusionDeployment.func_or_class(weights_dir)
        self._configs = {
            name: profile.user_config(name)
            for name in ("MediaDecoder", "FastTriage", "KeyframeSelector", "CompressionResilient", "AVAlignment", "Fusion")
        }
        for name, deployment in self._by_name().items():
            deployment.reconfigure(self._configs[name])

    def _by_name(self) -> dict[str, Any]:
        return {
            "MediaDecoder": self.decoder, "FastTriage": self.triage, "KeyframeSelector": self.keyframes,
            "CompressionResilient": self.compression, "AVAlignment": self.av, "Fusion": self.fusion,
        }

    @contextmanager
    def triage_overrides(self, overrides: dict[str, float]) -> Iterator[None]:
        """FastTriage reconfigured with `overrides` (e.g. early-exit thresholds), restored afterwards."""
        if not overrides:
            yield
            return
        self.triage.reconfigure({**self._configs["FastTriage"], **overrides})
        try:
            yield
        finally:
            self.triage.reconfigure(self._configs["FastTriage"])

    def run(self, data: bytes) -> PipelineRun:
        """The ingress's `_analyze` order without Ray: decode, triage, early exit, keyframes, visual, AV, fusion.

        AV runs after the visual branch and keyframe motion inside the keyframes stage here (the
        served graph overlaps AV with keyframes + visual, and motion with triage), so the
        in-process total is the sum of the stages.
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        clip = _timed(timings, "decode", lambda: decode_media(data, self.decoder.config))
        run = PipelineRun(clip, timings)
        meta = clip.meta
        if meta.kind == "video":
            run.triage = _timed(timings, "triage", lambda: self.triage._run(self.triage.weights.choose(), clip))
        if not run.early_exit:
            if meta.kind == "video" and clip.n_frames > 0:
                frame_scores = run.triage.frame_scores if run.triage else np.zeros(0, np.float32)
                run.keyframes = _timed(timings, "keyframes", lambda: self.keyframes._run(clip, frame_scores))
                run.visual = _timed(
                    timings, "visual", lambda: self.compression._run(self.compression.weights.choose(), clip, run.keyframes)
                )
            elif meta.kind == "image":
                run.visual = _timed(
                    timings, "visual", lambda: self.compression._run(self.compression.weights.choose(), clip, None)
                )
            if meta.has_audio and meta.kind != "image":
                run.av = _timed(timings, "av", lambda: self.av._run(self.av.weights.choose(), clip))
            run.fused = _timed(timings, "fusion", lambda: self.fusion._run(self.fusion.weights.choose(), run.branches()))
        timings["total"] = (time.perf_counter() - started) * 1e3
        return run


def _timed(timings: dict[str, float], stage: str, call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return call()
    finally:
        timings[stage] = (time.perf_counter() - started) * 1e3


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def wall_ms(call: Callable[[], Any], device: str = "cpu") -> float:
    """Wall time of one call; on CUDA, until the GPU has finished the work it queued."""
    started = time.perf_counter()
    call()
    _sync(device)
    return (time.perf_counter() - started) * 1e3


def median_ms(call: Callable[[], Any], repeats: int, device: str = "cpu", warmups: int = 1) -> float:
    """Median wall time of `call` over `repeats` runs after `warmups` untimed ones (first-call allocations)."""
    for _ in range(warmups):
        call()
        _sync(device)
    return statistics.median(wall_ms(call, device) for _ in range(repeats))


@torch.inference_mode()
def forward_floor(models: BranchModels, graph: InProcessGraph, run: PipelineRun, repeats: int) -> dict[str, float]:
    """Median forward time (ms) of each model the pipeline ran, on exactly the inputs its deployment built.

    Inputs come from `run` (the pipeline's own decode, keyframes and branch features), so the
    floor counts the same crops, frames and audio samples; tensors are built before timing.
    """
    dev = models.device
    clip = run.clip
    forwards: dict[str, float] = {}
    if run.triage is not None and run.triage.branch.status == "ok":
        crops = images_to_tensor(clip.face_crops, dev).unsqueeze(0)  # (1, T, 3, H, W)
        forwards["triage"] = median_ms(lambda: models.triage(crops), repeats, dev)
    if run.visual is not None and run.visual.status == "ok":
        idx = np.unique(graph.compression._frame_indices(clip, run.keyframes))
        crops = images_to_tensor(clip.face_crops[idx], dev)  # (K, 3, H, W)
        forwards["visual"] = median_ms(lambda: models.compression(crops), repeats, dev)
    if run.av is not None and run.av.audio.status == "ok":
        max_samples = int(graph.av.config.max_audio_s * clip.sample_rate)
        audio = audio_to_tensor(clip.audio[:max_samples], dev).unsqueeze(0)  # (1, N)
        if run.av.av.status == "ok":  # the deployment found the lips usable: full model
            lips = lips_to_tensor(clip.lip_trajectory, dev).unsqueeze(0)  # (1, T, 20, 2)
            mouths = mouths_to_tensor(clip.mouth_crops, dev).unsqueeze(0)  # (1, T, h, w)
            times = torch.from_numpy(np.array(clip.timestamps, np.float32)).to(dev).unsqueeze(0)  # (1, T)
            forwards["av"] = median_ms(lambda: models.av(audio, lips, mouths, times), repeats, dev)
        else:
            forwards["av"] = median_ms(lambda: models.av.spoof(audio), repeats, dev)
    if run.fused is not None and models.fusion is not None:
        features = {b.modality: b.features for b in run.branches() if b.status == "ok" and b.features is not None}
        inputs, present = fusion_batch([features], models.fusion, dev)
        forwards["fusion"] = median_ms(lambda: models.fusion(inputs, present), repeats, dev)
    return forwards


def load_floor_models(profile: Profile) -> BranchModels:
    """The profile's weight versions as bare models (no deployment wrapper), on the deployments' device."""
    weights_dir = Path(profile.weights_dir) if profile.weights_dir else None
    return load_branch_models(profile.weight_versions(), weights_dir=weights_dir, device=pick_device())


def measure(
    graph: InProcessGraph, models: BranchModels, data: bytes, triage_overrides: dict[str, float], repeats: int
) -> dict[str, Any]:
    """Floor and in-process pipeline for one upload: medians over `repeats` runs after one warm-up."""
    with_faces = graph.decoder.config
    without_faces = replace(with_faces, analyze_faces=False)
    runs: list[PipelineRun] = []
    faces_ms: list[float] = []
    only_ms: list[float] = []
    with graph.triage_overrides(triage_overrides):
        first = graph.run(data)  # warm-up; also the inputs the floor's forward passes reuse
        decode_media(data, without_faces)  # warm-up of the faceless path
        # round-robin, so a change in background load mid-way touches all three alike
        for _ in range(repeats):
            runs.append(graph.run(data))
            faces_ms.append(wall_ms(lambda: decode_media(data, with_faces)))
            only_ms.append(wall_ms(lambda: decode_media(data, without_faces)))
        forwards = forward_floor(models, graph, first, repeats)
    decode_faces, decode_only = statistics.median(faces_ms), statistics.median(only_ms)
    totals = [r.timings_ms["total"] for r in runs]
    stage_means = {
        stage: statistics.fmean(r.timings_ms[stage] for r in runs)
        for stage in (*STAGES, "total") if all(stage in r.timings_ms for r in runs)
    }
    clip = first.clip
    return {
        "floor": {
            "decode_faces_ms": decode_faces,
            "decode_only_ms": decode_only,
            "forward_ms": forwards,
            "total_ms": decode_faces + sum(forwards.values()),
            "total_decode_only_ms": decode_only + sum(forwards.values()),
        },
        "in_process": {
            "p50_ms": statistics.median(totals),
            "min_ms": min(totals),
            "max_ms": max(totals),
            "runs": len(totals),
            "stage_mean_ms": stage_means,
            "early_exit": first.early_exit,
        },
        "inputs": {
            "kind": clip.meta.kind,
            "frames": int(clip.n_frames),
            "frame_size": [int(s) for s in clip.frames.shape[1:3]] if clip.n_frames else None,
            "audio_s": round(len(clip.audio) / clip.sample_rate, 3),
            "face_coverage": round(float(clip.meta.face_coverage), 3),
            "keyframes": first.keyframes.indices if first.keyframes else None,
        },
    }


def prepare(profile: Profile) -> tuple[InProcessGraph, BranchModels]:
    """Deployments and floor models, with torch sized like a replica (one intra-op thread on CPU)."""
    graph = InProcessGraph(profile)
    configure_torch_threads()
    return graph, load_floor_models(profile)
