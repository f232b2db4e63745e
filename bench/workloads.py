"""The benchmark's inputs, generated in code with fixed seeds and cached outside the repository.

Media is never committed: every file is rebuilt from `tests.mediagen` with a fixed seed and a
fixed libx264 thread count, so two runs on two machines upload byte-identical files. Generating a
long 1080p clip takes minutes on a small machine, so each file is written once into a cache
directory (default: the system temp dir) under a name derived from everything that shapes it;
later runs, and later workloads of the same run, reuse it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tests.mediagen import encode_audio, encode_image, speech_like_audio, talking_face_frames, talking_face_video

# Bump when a generator's output changes for the same parameters, so stale cache files are not reused.
GENERATOR_VERSION = 1
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "spectrashield-bench-media"
WORKLOAD_NAMES = ("video_720p", "video_1080p_long", "image_1024", "audio", "early_exit")
# FastTriage user_config for the early-exit workload: any triage score below 0.999 settles the
# clip as "real" (the generated clip scores far below it), so the later stages never run.
EARLY_EXIT_TRIAGE = {"early_exit_low": 0.999, "early_exit_high": 1.0}


@dataclass(frozen=True)
class MediaSpec:
    """Everything that determines one generated file's bytes."""

    kind: str  # "video" | "image" | "audio"
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    seed: int = 0
    fmt: str = ""  # container or file format

    def key(self) -> str:
        text = json.dumps({"generator": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def filename(self) -> str:
        ext = {"mp4": "mp4", "jpeg": "jpg", "wav": "wav"}[self.fmt]
        if self.kind == "video":
            return f"talking-face-{self.width}x{self.height}-{self.fps:g}fps-{self.seconds:g}s-{self.key()}.{ext}"
        if self.kind == "image":
            return f"face-{self.width}x{self.height}-{self.key()}.{ext}"
        return f"speech-{self.seconds:g}s-{self.key()}.{ext}"

    def describe(self) -> str:
        if self.kind == "video":
            return f"{self.seconds:g} s {self.width}x{self.height} {self.fps:g} fps H.264 + AAC talking face"
        if self.kind == "image":
            return f"{self.width}x{self.height} JPEG face"
        return f"{self.seconds:g} s speech-like audio, 16 kHz mono WAV"


@dataclass
class Workload:
    """One benchmarked upload plus how the graph is configured for it."""

    name: str
    spec: MediaSpec
    triage_overrides: dict[str, float] = field(default_factory=dict)  # FastTriage user_config changes
    path: Path | None = None
    size_bytes: int = 0
    generate_s: float = 0.0  # 0 when the file came from the cache

    @property
    def description(self) -> str:
        text = self.spec.describe()
        return text + (" (early exit forced by FastTriage thresholds)" if self.triage_overrides else "")

    def data(self) -> bytes:
        assert self.path is not None, "generate() first"
        return self.path.read_bytes()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "spec": asdict(self.spec),
            "triage_overrides": self.triage_overrides, "file": self.path.name if self.path else None,
            "size_bytes": self.size_bytes, "generate_s": round(self.generate_s, 2),
        }


def plan_workloads(
    names: list[str], *, video_seconds: float, long_seconds: float, audio_seconds: float, image_side: int = 1024
) -> list[Workload]:
    """The workloads named in `names`, in the benchmark's order; durations are the run's settings."""
    unknown = sorted(set(names) - set(WORKLOAD_NAMES))
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; known: {', '.join(WORKLOAD_NAMES)}")
    # float() everywhere: 3 and 3.0 must name the same cached file
    video_seconds, long_seconds, audio_seconds = float(video_seconds), float(long_seconds), float(audio_seconds)
    clip_720p = MediaSpec("video", video_seconds, 1280, 720, 30.0, seed=0, fmt="mp4")
    every = {
        "video_720p": Workload("video_720p", clip_720p),
        "video_1080p_long": Workload(
            "video_1080p_long", MediaSpec("video", long_seconds, 1920, 1080, 30.0, seed=1, fmt="mp4")
        ),
        "image_1024": Workload("image_1024", MediaSpec("image", 0.0, image_side, image_side, seed=2, fmt="jpeg")),
        "audio": Workload("audio", MediaSpec("audio", audio_seconds, seed=3, fmt="wav")),
        # the same bytes as video_720p: the two rows differ only by the early exit
        "early_exit": Workload("early_exit", clip_720p, triage_overrides=dict(EARLY_EXIT_TRIAGE)),
    }
    return [every[name] for name in WORKLOAD_NAMES if name in names]


# libx264 cuts each picture into one slice per encoding thread, and its automatic thread count follows
# the machine's cores, so the count is fixed: 2 is what the 2-core machine that made every earlier
# result picked, so those files stay byte for byte what they were (and two slices per picture).
X264_OPTIONS = {"threads": "2"}


def _encode(spec: MediaSpec) -> bytes:
    """The file's bytes; a pure function of `spec`."""
    if spec.kind == "video":
        return talking_face_video(
            seconds=spec.seconds, size=(spec.width, spec.height), fps=spec.fps, container=spec.fmt, seed=spec.seed,
            encoder_options=X264_OPTIONS,
        )
    if spec.kind == "image":
        # one frame of the talking-face generator, mouth closed: a face dlib finds, at full resolution
        frame = talking_face_frames(np.zeros(1), size=(spec.width, spec.height), seed=spec.seed)[0]  # (H, W, 3)
        return encode_image(frame, spec.fmt)
    return encode_audio(speech_like_audio(spec.seconds, 16_000, spec.seed), 16_000, spec.fmt)


def generate(workloads: list[Workload], cache_dir: Path = DEFAULT_CACHE_DIR, log: Callable[[str], None] = print) -> None:
    """Make sure every workload's file exists in `cache_dir` (written atomically), and fill in path and size."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        path = cache_dir / workload.spec.filename()
        if not path.is_file():
            log(f"generating {workload.name}: {workload.spec.describe()} -> {path}")
            started = time.perf_counter()
            data = _encode(workload.spec)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            workload.generate_s = time.perf_counter() - started
        workload.path = path
        workload.size_bytes = path.stat().st_size
