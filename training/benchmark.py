"""The seeded synthetic forensic benchmark: talking-face videos, images and speech with labelled manipulations.

`generate_benchmark` writes videos (MP4: H.264 + AAC), images (PNG/JPEG) and audio (WAV/FLAC)
plus a `manifest.jsonl` of `training.manifest.ManifestEntry` lines, so trainers and evaluators
read it exactly like a public dataset's adapter output. Everything is derived from one seed:
the same seed and arguments give a byte-identical manifest and identical decoded content,
whatever `workers` is, because each file's randomness comes from its own seed and named
random streams, never from the order in which files are made.

Identities and splits. A `group` is one synthetic subject: a face (colour, scale, mirror), a
scene (a background photo crop, placement) and a voice. Files are dealt to groups round-robin
and whole groups to splits, so no identity, scene or voice appears in two splits.

Families (see `training.manifest`): visual `face_blend`, `upsample`, `warp`, `flicker`; audio
`vocoder`, `splice`; audio-visual `av_shift`, `av_swap`. Audio manipulations in a video are
lip-synced (the mouth follows the manipulated speech, as in a lip-synced voice clone), so
they do not break synchrony; only the AV families do. Each family's parameters are recorded
under its name in `meta`; `meta.av_offset_ms` > 0 means the audio leads the picture.

Compression (`compression_levels`): `none` keeps the camera original (H.264 CRF 18, PNG);
`crfN` re-encodes at CRF N (images: JPEG at `CompressionLevel.jpeg_quality`), `_half` halves
the resolution first, and a `double_encode_fraction` of compressed files are re-encoded twice
(`crf30x2`). `compress_video` / `compress_image` are importable for training augmentation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm import tqdm

from training.manifest import (
    AUDIO_FAMILIES,
    AV_FAMILIES,
    VISUAL_FAMILIES,
    ManifestEntry,
    ModalityLabels,
    Split,
    read_manifest,
    write_manifest,
)
from training.synth_audio import (
    SAMPLE_RATE,
    Voice,
    encode_audio_file,
    mouth_opening,
    shift_audio,
    splice_segments,
    synth_speech,
    vocoder_resynthesis,
)
from training.synth_video import (
    Camera,
    CompressionLevel,
    FaceBlend,
    Flicker,
    Lighting,
    Subject,
    Upsample,
    VisualEdits,
    Warp,
    build_scene,
    compress_image,
    compress_video,
    encode_image,
    encode_mp4,
    render_frames,
)

__all__ = [
    "AV_OFFSET_RANGE_MS",
    "MANIFEST_NAME",
    "BenchmarkConfig",
    "ItemPlan",
    "SynthAudio",
    "SynthImage",
    "SynthVideo",
    "compress_image",
    "compress_video",
    "generate_benchmark",
    "main",
    "make_item",
    "plan_benchmark",
    "sample_visual_edits",
    "summarize",
    "synthesize_audio",
    "synthesize_image",
    "synthesize_video",
]

MANIFEST_NAME = "manifest.jsonl"
IMAGE_FAMILIES = ("face_blend", "upsample", "warp")  # flicker is temporal: no meaning in a still
AV_OFFSET_RANGE_MS = (150.0, 800.0)
_VIDEO_FAMILY_GROUPS = (VISUAL_FAMILIES, AUDIO_FAMILIES, AV_FAMILIES)
# Named random streams: each aspect of a file draws from its own generator, so switching a
# family on or off changes only what that family touches.
_STREAMS = {name: i for i, name in enumerate((
    "speech", "camera", "lighting", "noise", "pose", "face_blend", "upsample", "warp", "flicker",
    "vocoder", "splice", "av_shift", "av_swap",
))}


class BenchmarkConfig(BaseModel):
    """Everything that determines a benchmark; validated once, so a bad argument fails before any file is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_videos: int = Field(ge=0)
    n_images: int = Field(ge=0)
    n_audio: int = Field(ge=0)
    seed: int = 0
    seconds: tuple[float, float] = (4.0, 6.0)
    size: tuple[int, int] = (320, 240)  # video width, height
    fps: int = Field(25, gt=0, le=120)
    compression_levels: tuple[str, ...] = ("none", "crf23", "crf30", "crf38_half")
    double_encode_fraction: float = Field(0.2, ge=0.0, le=1.0)
    splits: tuple[tuple[Split, float], ...] = (("train", 0.6), ("val", 0.1), ("fusion", 0.15), ("test", 0.15))
    items_per_group: int = Field(6, gt=0, description="files per subject, over all kinds")
    video_authentic_fraction: float = Field(0.45, ge=0.0, le=1.0)
    image_authentic_fraction: float = Field(0.5, ge=0.0, le=1.0)
    audio_authentic_fraction: float = Field(0.5, ge=0.0, le=1.0)
    second_family_fraction: float = Field(0.25, ge=0.0, le=1.0, description="fakes that get a second family")
    face_image_side: int = Field(256, ge=64, description="side of the square face-crop images")

    @field_validator("seconds")
    @classmethod
    def _seconds(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.5 <= v[0] <= v[1] <= 60:
            raise ValueError(f"seconds must satisfy 0.5 <= min <= max <= 60, got {v}")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 64 or v[1] < 48 or v[0] % 4 or v[1] % 4:
            raise ValueError(f"size must be at least 64x48 with sides divisible by 4 (H.264 at half size), got {v}")
        return v

    @field_validator("compression_levels")
    @classmethod
    def _levels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("compression_levels must not be empty")
        for name in v:
            CompressionLevel.parse(name)
        return v

    @model_validator(mode="after")
    def _splits(self) -> BenchmarkConfig:
        names = [name for name, _ in self.splits]
        if not names or len(set(names)) != len(names) or any(f < 0 for _, f in self.splits):
            raise ValueError(f"splits must name distinct splits with non-negative fractions, got {self.splits}")
        if not math.isclose(sum(f for _, f in self.splits), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {self.splits}")
        return self


@dataclass(frozen=True)
class ItemPlan:
    """One file to make: what it is, whose it is, and which manipulations and compression it gets."""

    kind: Literal["video", "image", "audio"]
    path: str  # relative to the benchmark directory
    group: str
    split: Split
    seed: int  # the file's own seed; with the fields below it fixes the content completely
    families: tuple[str, ...]
    compression: str
    seconds: float  # video and audio duration
    fmt: str  # mp4, png, jpeg, wav, flac
    subject: Subject
    voice: Voice
    view: Literal["scene", "face"] = "scene"  # images: the whole frame or a face crop
    donor_group: str | None = None  # av_swap: whose voice replaces the audio (None: a stranger's)
    donor_voice: Voice | None = None


@dataclass
class SynthVideo:
    """One clip before encoding, with the ground truth the tests (and future localisation labels) need."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    audio: np.ndarray  # (N,) float32 at SAMPLE_RATE, what is muxed with the picture
    mouth_open: np.ndarray  # (T,) the mouth opening each frame shows, in [0, 1]
    face_boxes: np.ndarray  # (T, 4) float32 face (jaw-and-brow hull) in frame pixels
    edit_boxes: np.ndarray  # (T, 4) float32 bounds of visually edited pixels; NaN when none
    meta: dict = field(default_factory=dict)


@dataclass
class SynthImage:
    """One still before encoding."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    face_box: np.ndarray  # (4,) float32
    edit_box: np.ndarray  # (4,) float32; NaN when unedited
    meta: dict = field(default_factory=dict)


@dataclass
class SynthAudio:
    """One utterance before encoding."""

    audio: np.ndarray  # (N,) float32 at SAMPLE_RATE
    meta: dict = field(default_factory=dict)


def _rng(seed: int, stream: str) -> np.random.Generator:
    """File `seed`'s generator for one named aspect (see `_STREAMS`)."""
    return np.random.default_rng([seed, _STREAMS[stream]])


def _stream_seed(seed: int, stream: str) -> int:
    return int(_rng(seed, stream).integers(2**31))


def sample_visual_edits(families: tuple[str, ...], seed: int, n_frames: int) -> VisualEdits:
    """The visual families in `families` with the parameters file `seed` gives them, each from its own stream."""
    return VisualEdits(
        face_blend=FaceBlend.sample(_rng(seed, "face_blend")) if "face_blend" in families else None,
        upsample=Upsample.sample(_rng(seed, "upsample")) if "upsample" in families else None,
        warp=Warp.sample(_rng(seed, "warp")) if "warp" in families else None,
        flicker=Flicker.sample(_rng(seed, "flicker"), n_frames) if "flicker" in families else None,
    )


def _manipulate_audio(audio: np.ndarray, families: tuple[str, ...], voice: Voice, seed: int,
                      meta: dict) -> np.ndarray:
    """Apply the audio families in `families` to `audio` `(N,)` (same length out), recording parameters in `meta`."""
    if "vocoder" in families:
        rng = _rng(seed, "vocoder")
        n_iter = int(rng.integers(16, 48))
        audio = vocoder_resynthesis(audio, rng, n_iter=n_iter)
        meta["vocoder"] = {"method": "mel64-griffin-lim", "n_iter": n_iter}
    if "splice" in families:
        donor = synth_speech(len(audio) / SAMPLE_RATE, voice, _stream_seed(seed, "splice"))
        audio, segments = splice_segments(audio, donor, _rng(seed, "splice"))
        meta["splice"] = {"segments": [s.as_meta() for s in segments]}
    return audio


def synthesize_video(
    subject: Subject, voice: Voice, families: tuple[str, ...], seed: int, seconds: float,
    size: tuple[int, int] = (320, 240), fps: int = 25, donor_voice: Voice | None = None,
) -> SynthVideo:
    """Frames and muxed audio of one clip, before encoding; `families` empty gives the authentic clip.

    The speaker's speech is synthesised first; audio families then manipulate it and the mouth is
    animated from the result (lip-synced). `av_swap` replaces the muxed audio with another
    utterance by `donor_voice` (a stranger's if None) after the mouth was animated, and
    `av_shift` moves the muxed audio by 150-800 ms either way. Everything else about the clip
    (speech, camera, light, noise) is the same for every choice of `families`.
    """
    n_frames = max(int(round(seconds * fps)), 1)
    duration = n_frames / fps
    meta: dict = {}
    speech = synth_speech(duration, voice, _stream_seed(seed, "speech"))  # (N,)
    if "av_swap" in families:
        stranger = donor_voice or Voice.sample(_rng(seed, "av_swap"))
        track = synth_speech(duration, stranger, _stream_seed(seed, "av_swap"))
        track = _manipulate_audio(track, families, stranger, seed, meta)
        lips = speech
    else:
        track = _manipulate_audio(speech, families, voice, seed, meta)
        lips = track
    mouth = mouth_opening(lips, n_frames, fps)  # (T,)
    if "av_shift" in families:
        rng = _rng(seed, "av_shift")
        offset_ms = float(rng.uniform(*AV_OFFSET_RANGE_MS) * rng.choice([-1, 1]))
        offset_ms = round(offset_ms, 1)
        track = shift_audio(track, offset_ms, rng)
        meta["av_offset_ms"] = offset_ms
    edits = sample_visual_edits(families, seed, n_frames)
    meta.update(edits.meta())
    scene = build_scene(subject, size)
    rendered = render_frames(
        scene, mouth, Camera.smooth(_rng(seed, "camera"), n_frames, fps, size),
        Lighting.drifting(_rng(seed, "lighting"), n_frames, fps), size, fps, _stream_seed(seed, "noise"), edits,
    )
    return SynthVideo(rendered.frames, track, mouth, rendered.face_boxes, rendered.edit_boxes, meta)


def synthesize_image(
    subject: Subject, families: tuple[str, ...], seed: int, size: tuple[int, int] = (320, 240),
    view: Literal["scene", "face"] = "scene", face_side: int = 256,
) -> SynthImage:
    """One still: the subject's scene at `size`, or a `face_side` square face crop; visual families only."""
    unknown = set(families) - set(IMAGE_FAMILIES)
    if unknown:
        raise ValueError(f"images take only {IMAGE_FAMILIES}, got {sorted(unknown)}")
    pose = _rng(seed, "pose")
    mouth = np.array([pose.uniform(0.0, 0.8)])
    t = float(pose.uniform(0, 5))  # where in a warp's cycle the still is taken
    if view == "face":
        out_size = (face_side, face_side)
        scene = build_scene(subject, (face_side * 4 // 3, face_side))
        camera = Camera.on_face(scene, face_side, float(pose.uniform(0.45, 0.6)))
    else:
        out_size = size
        scene = build_scene(subject, size)
        camera = Camera.smooth(_rng(seed, "camera"), 1, 1.0, size)
    edits = sample_visual_edits(families, seed, 1)
    if edits.warp is not None:  # a still shows the warp at a random moment of its cycle
        edits = VisualEdits(edits.face_blend, edits.upsample, edits.warp.at(t))
    rendered = render_frames(scene, mouth, camera, Lighting.drifting(_rng(seed, "lighting"), 1, 1.0), out_size, 1.0,
                             _stream_seed(seed, "noise"), edits)
    return SynthImage(rendered.frames[0], rendered.face_boxes[0], rendered.edit_boxes[0], edits.meta())


def synthesize_audio(voice: Voice, families: tuple[str, ...], seed: int, seconds: float) -> SynthAudio:
    """One utterance of `voice`, manipulated by the audio families in `families`."""
    unknown = set(families) - set(AUDIO_FAMILIES)
    if unknown:
        raise ValueError(f"audio files take only {AUDIO_FAMILIES}, got {sorted(unknown)}")
    meta: dict = {}
    speech = synth_speech(seconds, voice, _stream_seed(seed, "speech"))
    return SynthAudio(_manipulate_audio(speech, families, voice, seed, meta), meta)


# ---------------------------------------------------------------- planning


def _split_groups(n_groups: int, splits: tuple[tuple[Split, float], ...], rng: np.random.Generator) -> list[Split]:
    """Split of each group: group counts by largest remainder, at least one per non-empty split when possible."""
    fractions = np.array([f for _, f in splits])
    counts = np.floor(fractions * n_groups).astype(int)
    for i in np.argsort(-(fractions * n_groups - counts), kind="stable")[: n_groups - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((counts == 0) & (fractions > 0)):
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    labels = [name for (name, _), c in zip(splits, counts) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n_groups)]


def _pick_families(rng: np.random.Generator, authentic_fraction: float, second_fraction: float,
                   pools: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """Empty (authentic) or a primary family plus, sometimes, one from another pool; in manifest family order."""
    if rng.random() < authentic_fraction:
        return ()
    everything = [f for pool in pools for f in pool]
    primary = str(rng.choice(everything))
    chosen = {primary}
    others = [f for pool in pools if primary not in pool for f in pool]
    if others and rng.random() < second_fraction:
        chosen.add(str(rng.choice(others)))
    return tuple(f for f in everything if f in chosen)


def _pick_compression(rng: np.random.Generator, config: BenchmarkConfig) -> str:
    level = str(rng.choice(config.compression_levels))
    if level != "none" and rng.random() < config.double_encode_fraction and CompressionLevel.parse(level).passes == 1:
        level += "x2"
    return level


def plan_benchmark(config: BenchmarkConfig) -> list[ItemPlan]:
    """Every file of the benchmark, decided up front from `config.seed` (cheap: nothing is rendered)."""
    rng = np.random.default_rng([config.seed, 1_000_003])
    n_items = config.n_videos + config.n_images + config.n_audio
    if n_items == 0:
        return []
    n_groups = max(math.ceil(n_items / config.items_per_group), min(len(config.splits), n_items))
    groups = [f"synth{config.seed}-{i:04d}" for i in range(n_groups)]
    split_of = dict(zip(groups, _split_groups(n_groups, config.splits, rng)))
    subjects = {g: Subject.sample(g, np.random.default_rng([config.seed, 2, i])) for i, g in enumerate(groups)}
    voices = {g: Voice.sample(np.random.default_rng([config.seed, 3, i])) for i, g in enumerate(groups)}
    item_seeds = np.random.SeedSequence(config.seed).generate_state(n_items, np.uint32)
    plans: list[ItemPlan] = []
    for kind, count in (("video", config.n_videos), ("image", config.n_images), ("audio", config.n_audio)):
        order = rng.permutation(n_groups)
        for i in range(count):
            group = groups[int(order[i % n_groups])]
            split = split_of[group]
            seed = int(item_seeds[len(plans)])
            seconds = round(float(rng.uniform(*config.seconds)), 2)
            common = dict(group=group, split=split, seed=seed, seconds=seconds, subject=subjects[group],
                          voice=voices[group])
            if kind == "video":
                families = _pick_families(rng, config.video_authentic_fraction, config.second_family_fraction,
                                          _VIDEO_FAMILY_GROUPS)
                donor = None
                if "av_swap" in families:
                    same_split = [g for g in groups if split_of[g] == split and g != group]
                    donor = str(rng.choice(same_split)) if same_split else None
                plans.append(ItemPlan(kind="video", path=f"videos/v{i:05d}.mp4", families=families,
                                      compression=_pick_compression(rng, config), fmt="mp4", donor_group=donor,
                                      donor_voice=voices[donor] if donor else None, **common))
            elif kind == "image":
                families = _pick_families(rng, config.image_authentic_fraction, config.second_family_fraction,
                                          (("face_blend",), ("upsample",), ("warp",)))
                compression = _pick_compression(rng, config)
                fmt = "png" if compression == "none" else "jpeg"
                view = "face" if rng.random() < 0.5 else "scene"
                plans.append(ItemPlan(kind="image", path=f"images/i{i:05d}.{'png' if fmt == 'png' else 'jpg'}",
                                      families=families, compression=compression, fmt=fmt, view=view, **common))
            else:
                families = _pick_families(rng, config.audio_authentic_fraction, config.second_family_fraction,
                                          (("vocoder",), ("splice",)))
                fmt = "flac" if rng.random() < 0.5 else "wav"
                plans.append(ItemPlan(kind="audio", path=f"audio/a{i:05d}.{fmt}", families=families,
                                      compression="none", fmt=fmt, **common))
    return plans


# ---------------------------------------------------------------- making files


def _labels(plan: ItemPlan) -> ModalityLabels:
    fams = set(plan.families)
    visual = int(bool(fams & set(VISUAL_FAMILIES)))
    audio = int(bool(fams & set(AUDIO_FAMILIES)))
    av = int(bool(fams & set(AV_FAMILIES)))
    if plan.kind == "video":
        return ModalityLabels(visual=visual, audio=audio, av=av)
    if plan.kind == "image":
        return ModalityLabels(visual=visual)
    return ModalityLabels(audio=audio)


def make_item(plan: ItemPlan, config: BenchmarkConfig, out_dir: Path) -> ManifestEntry:
    """Render, encode, compress and write one planned file; return its manifest line."""
    meta: dict = {"seed": plan.seed, "background": plan.subject.background}
    if plan.kind == "video":
        clip = synthesize_video(plan.subject, plan.voice, plan.families, plan.seed, plan.seconds, config.size,
                                config.fps, plan.donor_voice)
        data = compress_video(encode_mp4(clip.frames, clip.audio, config.fps), plan.compression)
        level = CompressionLevel.parse(plan.compression)
        width, height = config.size
        if level.half:
            width, height = width // 2 // 2 * 2, height // 2 // 2 * 2
        meta.update(duration_s=round(len(clip.frames) / config.fps, 3), fps=config.fps, width=width, height=height,
                    **clip.meta)
        if plan.donor_group or "av_swap" in plan.families:
            meta["swap_donor"] = plan.donor_group or "stranger"
    elif plan.kind == "image":
        still = synthesize_image(plan.subject, plan.families, plan.seed, config.size, plan.view,
                                 config.face_image_side)
        data = compress_image(encode_image(still.image, "png"), plan.compression)
        height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        meta.update(view=plan.view, width=width, height=height, **still.meta)
    else:
        speech = synthesize_audio(plan.voice, plan.families, plan.seed, plan.seconds)
        data = encode_audio_file(speech.audio, plan.fmt)
        meta.update(duration_s=round(len(speech.audio) / SAMPLE_RATE, 3), sample_rate=SAMPLE_RATE, **speech.meta)
    meta["format"] = plan.fmt
    target = out_dir / plan.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return ManifestEntry(
        path=plan.path, label=int(bool(plan.families)), kind=plan.kind, families=list(plan.families),
        compression=plan.compression, split=plan.split, source="synthetic", modality_labels=_labels(plan),
        group=plan.group, meta=meta,
    )


def _worker_init() -> None:
    """One OpenCV thread per worker process: the workers already use every core."""
    cv2.setNumThreads(1)


def _make_item_task(args: tuple[ItemPlan, BenchmarkConfig, Path]) -> ManifestEntry:
    return make_item(*args)


def generate_benchmark(
    out_dir: Path,
    *,
    n_videos: int,
    n_images: int,
    n_audio: int,
    seed: int = 0,
    seconds: tuple[float, float] = (4.0, 6.0),
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    compression_levels: tuple[str, ...] = ("none", "crf23", "crf30", "crf38_half"),
    double_encode_fraction: float = 0.2,
    splits: tuple[tuple[Split, float], ...] = (("train", 0.6), ("val", 0.1), ("fusion", 0.15), ("test", 0.15)),
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write the benchmark's files and `manifest.jsonl` under `out_dir`; return the manifest's path.

    Deterministic in its arguments (not in `workers`). `workers` > 1 renders files in that many
    processes (spawned, so it is safe whatever the caller has imported).
    """
    config = BenchmarkConfig(
        n_videos=n_videos, n_images=n_images, n_audio=n_audio, seed=seed, seconds=seconds, size=size, fps=fps,
        compression_levels=compression_levels, double_encode_fraction=double_encode_fraction, splits=splits,
    )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_benchmark(config)
    tasks = [(plan, config, out_dir) for plan in plans]
    bar = tqdm(total=len(tasks), desc="benchmark", unit="file", disable=not progress)
    entries: list[ManifestEntry] = []
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            entries.append(_make_item_task(task))
            bar.update()
    else:
        spawn = get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_worker_init) as pool:
            for entry in pool.map(_make_item_task, tasks):
                entries.append(entry)
                bar.update()
    bar.close()
    manifest = out_dir / MANIFEST_NAME
    write_manifest(entries, manifest)
    return manifest


def summarize(entries: list[ManifestEntry]) -> str:
    """A few lines of counts (kind x label, families, splits, compression) for the CLI to print."""
    kinds = Counter(f"{e.kind}:{'fake' if e.label else 'real'}" for e in entries)
    families = Counter(f for e in entries for f in e.families)
    splits = Counter(e.split for e in entries)
    levels = Counter(e.compression for e in entries)
    return "\n".join(
        f"{title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        for title, counts in (("files", kinds), ("families", families), ("splits", splits), ("compression", levels))
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m training.benchmark OUT --videos N --images N --audio N --seed S`: write a benchmark."""
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=main.__doc__)
    parser.add_argument("out", type=Path, help="output directory (manifest.jsonl and media)")
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--audio", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, nargs=2, default=(4.0, 6.0), metavar=("MIN", "MAX"))
    parser.add_argument("--size", default="320x240", help="video WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    start = time.perf_counter()
    manifest = generate_benchmark(
        args.out, n_videos=args.videos, n_images=args.images, n_audio=args.audio, seed=args.seed,
        seconds=tuple(args.seconds), size=(width, height), fps=args.fps, workers=args.workers,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    entries = list(read_manifest(manifest))
    print(f"wrote {manifest} ({len(entries)} files in {elapsed:.1f} s)")
    print(summarize(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
