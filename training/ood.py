"""Fit the visual branch's out-of-distribution statistics on authentic data and attach them to its bundle.

The clip embedding is what the served visual stage measures: the mean of the CompressionResilient
embeddings over the face crops it scores (`pipeline.visual.run_visual`). Mean and a Ledoit-Wolf
shrunk covariance come from the authentic `train` files; the threshold is a quantile of the
authentic `val` files' distances, so in-distribution authentic media is flagged at about
1 - quantile of the time. Nothing here looks at a cross-generator set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from tqdm.auto import tqdm

from models.bundle import attach_ood
from models.ood import OODStats
from pipeline.config import PipelineConfig
from pipeline.visual import run_visual
from training.features import ManifestData, load_manifest_data, load_pipeline

logger = logging.getLogger(__name__)


def clip_embeddings(pipeline: Any, data: ManifestData, indices: list[int], progress: bool = True) -> np.ndarray:
    """(N, E) mean crop embedding of each file whose visual branch ran (files without a face are left out)."""
    bundle = pipeline.bundles["compression_resilient"]
    rows = []
    for i in tqdm(indices, desc="embeddings", unit="file", disable=not progress):
        branch = run_visual(bundle.model, [data.arrays(i)], [None], pipeline.config.visual, pipeline.device)[0]
        if branch.status == "ok":
            rows.append(branch.features[3:])  # visual_features: [mean logit, max logit, mean error, mean embedding]
    return np.asarray(rows, np.float64)


def fit_stats(train: np.ndarray, val: np.ndarray, quantile: float = 0.99) -> tuple[OODStats, dict[str, Any]]:
    """Mean and shrunk precision from `train`, threshold = `quantile` of the `val` distances."""
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"need >= 2 authentic training and >= 1 validation embeddings, got {len(train)} and {len(val)}")
    lw = LedoitWolf().fit(train)
    provisional = OODStats(lw.location_, lw.precision_, float("inf"))
    distances = np.array([provisional.distance(x) for x in val])
    stats = OODStats(lw.location_, lw.precision_, float(np.quantile(distances, quantile)))
    report = {
        "train_files": int(len(train)), "val_files": int(len(val)), "quantile": quantile,
        "threshold": stats.threshold, "shrinkage": float(lw.shrinkage_),
        "val_distance_median": float(np.median(distances)),
        "train_distance_median": float(np.median([stats.distance(x) for x in train])),
    }
    return stats, report


def fit_ood(
    manifest: Path,
    version: str,
    *,
    weights_dir: Path | None = None,
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    quantile: float = 0.99,
    device: str = "cpu",
    workers: int = 1,
    progress: bool = True,
    attach: bool = True,
) -> dict[str, Any]:
    """Fit on the manifest's authentic train/val files and (with `attach`) add the statistics to the bundle."""
    settings = settings or PipelineConfig()
    data = load_manifest_data(
        manifest, splits=("train", "val"), cache_dir=cache_dir, decode_config=settings.decode,
        workers=workers, progress=progress,
    )
    pipeline = load_pipeline(version, settings, weights_dir=weights_dir, device=device, with_fusion=False)

    def authentic(split: str) -> list[int]:
        return [i for i in data.indices(split) if data.entries[i].label == 0 and data.entries[i].kind != "audio"]

    train = clip_embeddings(pipeline, data, authentic("train"), progress)
    val = clip_embeddings(pipeline, data, authentic("val"), progress)
    stats, report = fit_stats(train, val, quantile)
    bundle = pipeline.bundles["compression_resilient"]
    if attach:
        attach_ood(bundle.path, stats)
        logger.info("attached OOD statistics to %s (threshold %.3f)", bundle.path, stats.threshold)
    return {"bundle": str(bundle.path), "manifest": str(manifest), **report}
