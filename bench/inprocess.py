"""The floor and the pipeline in this process, both calling `pipeline`'s own code, no Ray.

- floor: `media.decode_media` alone (with the face analysis the models need), plus each model's
  forward pass on prebuilt tensors of exactly the inputs its stage reads (`crop_indices`,
  `served_audio`, `lips_usable`, `branch_features`). Nothing does this pipeline's work faster here.
- in-process: `LocalPipeline.run`, every stage of the graph in one process: what the replicas
  compute minus Ray's scheduling, object store and HTTP.

torch runs one intra-op thread, as each replica does (`OMP_NUM_THREADS=1` in `cluster/serve.cpu.yaml`),
so both sides do the same work with the same threads. On CUDA, each timed call ends with a synchronize.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from media import Clip, decode_media
from pipeline.analyze import Analysis
from pipeline.av import lips_usable, served_audio
from pipeline.config import PipelineConfig, TriageConfig, weight_versions
from pipeline.fuse import branch_features, fusion_batch
from pipeline.local import LocalPipeline
from pipeline.tensors import audio_to_tensor, images_to_tensor, lips_to_tensor, mouths_to_tensor, times_to_tensor
from pipeline.visual import crop_indices


def load_pipeline(serve_config: dict[str, Any]) -> LocalPipeline:
    """Every stage with a Serve config's settings and weight versions, torch sized like a replica."""
    torch.set_num_threads(1)
    app = serve_config["applications"][0]
    user_configs = {d["name"]: d.get("user_config") or {} for d in app.get("deployments") or []}
    return LocalPipeline.load(PipelineConfig.from_user_configs(user_configs), versions=weight_versions(user_configs),
                              weights_dir=(app.get("args") or {}).get("weights_dir"))


def with_triage(pipe: LocalPipeline, overrides: dict[str, float]) -> LocalPipeline:
    """The same loaded models with FastTriage's settings changed (the early-exit workload's thresholds)."""
    triage = TriageConfig.model_validate({**pipe.config.triage.model_dump(), **overrides})
    return dataclasses.replace(pipe, config=pipe.config.model_copy(update={"triage": triage}))


def wall_ms(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1e3


def forward_calls(pipe: LocalPipeline, clip: Clip, analysis: Analysis) -> dict[str, Callable[[], Any]]:
    """A call per model the analysis ran, on tensors built beforehand from exactly its stage's inputs."""
    config, device, calls = pipe.config, pipe.device, {}
    if analysis.triage is not None and analysis.triage.branch.status == "ok":
        frames = [images_to_tensor(clip.face_crops, device)]  # [(T, 3, S, S)]
        calls["triage"] = lambda: pipe.model("fast_triage").forward_clips(frames)
    if analysis.visual is not None and analysis.visual.status == "ok":
        crops = images_to_tensor(clip.face_crops[crop_indices(clip, analysis.keyframes, config.visual)], device)
        calls["visual"] = lambda: pipe.model("compression_resilient")(crops)  # (K, 3, S, S)
    if analysis.av is not None and analysis.av.audio.features is not None:  # it ran (then maybe abstained)
        av, audio = pipe.model("av_alignment"), audio_to_tensor(served_audio(clip, config.av), device).unsqueeze(0)
        if lips_usable(clip, config.av):
            lips = (
                lips_to_tensor(clip.lip_trajectory, device).unsqueeze(0),  # (1, T, 20, 2)
                mouths_to_tensor(clip.mouth_crops, device).unsqueeze(0),  # (1, T, h, w)
                times_to_tensor(clip.timestamps, device).unsqueeze(0),  # (1, T)
            )
            calls["av"] = lambda: av(audio, *lips)
        else:
            calls["av"] = lambda: av.spoof(audio)
    if analysis.fused is not None and analysis.fused.status == "ok":
        fusion = pipe.model("fusion")
        features, present = fusion_batch([branch_features(analysis.branches())], fusion, device)
        calls["fusion"] = lambda: fusion(features, present)
    return calls


def measure(pipe: LocalPipeline, data: bytes, repeats: int) -> dict[str, Any]:
    """Floor and in-process pipeline for one upload: medians over `repeats` runs after one warm-up each."""
    first = pipe.run(data)
    clip = decode_media(data, pipe.config.decode)  # also the decode's warm-up
    runs: list[Analysis] = []
    decode_ms: list[float] = []
    for _ in range(repeats):  # alternating, so a change in background load touches both alike
        runs.append(pipe.run(data))
        decode_ms.append(wall_ms(lambda: decode_media(data, pipe.config.decode)))
    forward_ms = {}
    with torch.inference_mode():
        for name, call in forward_calls(pipe, clip, first).items():
            call()
            forward_ms[name] = statistics.median(wall_ms(call) for _ in range(repeats))
    decode = statistics.median(decode_ms)
    stages = [s for s in runs[0].timings_ms if all(s in r.timings_ms for r in runs)]
    return {
        "floor": {"decode_ms": decode, "forward_ms": forward_ms, "total_ms": decode + sum(forward_ms.values())},
        "in_process": {
            "p50_ms": statistics.median(r.timings_ms["total"] for r in runs),
            "runs": len(runs),
            "stage_mean_ms": {s: statistics.fmean(r.timings_ms[s] for r in runs) for s in stages},
            "early_exit": first.early_exit,
        },
        "inputs": {
            "kind": clip.meta.kind,
            "frames": int(clip.n_frames),
            "audio_s": round(len(clip.audio) / clip.sample_rate, 3),
            "face_coverage": round(float(clip.meta.face_coverage), 3),
            "keyframes": first.keyframes.indices if first.keyframes else None,
        },
    }
