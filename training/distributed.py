"""Training on a Ray cluster: decoding and features as Ray Data `map_batches`, training as Ray Train.

`spectrashield train MODEL|all --ray-address ADDR --ray-workers N` decodes the manifest's uncached files
with Ray Data (`decode_on_ray`, into the shared feature cache) and trains each model as a `TorchTrainer` of N
CPU workers (gloo): every worker runs `training.train.train_model` on its share of each batch of one shuffled
order (`training.train.loader`), and `_step` averages the gradients, so every worker takes the same step.
BatchNorm layers normalise each worker's share with its own statistics, so models with BatchNorm differ
slightly from local mode; fusion (LayerNorm, no BatchNorm) equals local mode within float tolerance.

`spectrashield update --ray-address ADDR` (and `continual-scenario --ray-address`) run the same steps as
local mode, spread over the cluster:

- feature extraction: the manifest's visual files become a Ray Dataset; `map_batches` with a pool of
  actors (each loads the base model once) decodes every file with the served decode settings and
  answers the trunk's features of its face crops, one row per crop;
- the update: a `TorchTrainer` with `--ray-workers` workers, each holding a shard of the items
  (`UpdateProblem.shard`); gradients are summed with an all-reduce, and because the loss is written as
  sums over items divided by global totals, every step equals local mode's full-batch step (up to the
  order of floating-point sums), so the result matches local mode within tolerance.

Code on the workers: every node must import this project (a node image with it installed); on one
machine, or a cluster sharing this checkout, the driver puts the checkout's root on the job's PYTHONPATH.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import weights_root
from training.continual import (
    Features,
    UpdateParams,
    UpdateProblem,
    crop_features,
    crop_picks,
    fit,
    stratum,
    update_problem,
)
from training.features import load_manifest_data
from training.manifest import read_manifest
from training.train import TrainResult, check_new_version, train_model, visual_target
from training.visual_v2 import VISUAL_KINDS

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def connect(address: str) -> None:
    """Join the cluster at `address` as a driver, with this checkout importable on its workers."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, log_to_driver=False)


class TrunkFeatures:
    """A Ray Data actor: the base model loaded once, then per file decode -> face crops -> trunk features."""

    def __init__(self, base: str, weights_dir: str | None, max_crops: int) -> None:
        from models import load_version
        from pipeline.config import PipelineConfig

        torch.set_num_threads(1)
        self.model = load_version("compression_resilient", base, root=Path(weights_dir) if weights_dir else None).model
        self.decode, self.max_crops = PipelineConfig().decode, max_crops

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from media.decode import decode_media
        from media.errors import MediaError

        rows: dict[str, list[Any]] = {"index": [], "streams": [], "error": []}
        for index, path in zip(batch["index"], batch["path"], strict=True):
            try:
                clip = decode_media(Path(path).read_bytes(), self.decode)
            except MediaError:
                continue  # as in local mode: a file the decoder refuses is skipped
            pick = crop_picks(clip.face_found, self.max_crops)
            if pick.size == 0:
                continue
            streams, error = crop_features(self.model, clip.face_crops[pick])
            rows["index"] += [int(index)] * len(pick)
            rows["streams"] += list(streams)
            rows["error"] += list(error)
        if not rows["index"]:
            return {"index": np.zeros(0, np.int64), "streams": np.zeros((0, 1), np.float32),
                    "error": np.zeros((0, 1), np.float32)}
        return {"index": np.array(rows["index"], np.int64), "streams": np.stack(rows["streams"]),
                "error": np.stack(rows["error"])}


def manifest_features_on_ray(
    manifest: Path, splits: tuple[str, ...], base: str, weights_dir: Path | None, max_crops: int = 4,
    actors: int = 2,
) -> Features:
    """`training.continual.manifest_features`, as a Ray Data pipeline over the cluster."""
    import ray.data

    entries = [e for e in read_manifest(manifest) if e.split in splits and e.kind in VISUAL_KINDS]
    items = [{"index": i, "path": str(manifest.parent / e.path)} for i, e in enumerate(entries)]
    if not items:
        raise ValueError(f"no visual files of {splits} in {manifest}")
    dataset = ray.data.from_items(items).map_batches(
        TrunkFeatures, fn_constructor_kwargs={"base": base, "weights_dir": str(weights_dir) if weights_dir else None,
                                              "max_crops": max_crops},
        batch_size=4, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
    )
    rows = dataset.take_all()
    order = sorted(range(len(rows)), key=lambda r: rows[r]["index"])  # the manifest's order, crops in frame order
    index = np.array([rows[r]["index"] for r in order], np.int64)
    kept = sorted(set(index.tolist()))
    item = np.searchsorted(np.array(kept), index)
    return Features(np.stack([rows[r]["streams"] for r in order]).astype(np.float32),
                    np.stack([rows[r]["error"] for r in order]).astype(np.float32), item.astype(np.int64),
                    np.array([visual_target(entries[i]) for i in kept]), [stratum(entries[i]) for i in kept])


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the problem, gradients all-reduced, the whole model reported at the end."""
    import ray.train
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    p: UpdateParams = config["params"]
    model = torch.load(io.BytesIO(config["model"]), weights_only=False)
    problem: UpdateProblem = config["problem"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    def all_reduce(params: list[torch.nn.Parameter]) -> None:  # the shards' gradients add up to the whole problem's
        for q in params:
            dist.all_reduce(q.grad, op=dist.ReduceOp.SUM)

    student, loss = fit(model, problem.shard(rank, world), problem.totals(), p, reduce=all_reduce)
    checkpoint = None
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:  # every rank holds the same weights: one reports them
            save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, f"{folder}/model.safetensors")
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"loss": loss}, checkpoint=checkpoint)


def update_on_ray(
    model: torch.nn.Module, new: Features, replay: Features | None, p: UpdateParams, workers: int, scratch: Path,
) -> torch.nn.Module:
    """`training.continual.update` on `workers` Ray Train workers (CPU); the updated copy of `model`."""
    import copy

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save(model, buffer)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"params": p, "model": buffer.getvalue(), "problem": update_problem(model, new, replay, p)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        # storage_path: where the checkpoint lands; on a cluster of several machines it must be shared storage.
        run_config=RunConfig(storage_path=str(scratch / "ray_train"), name="update"),
    )
    result = trainer.fit()
    student = copy.deepcopy(model)
    with result.checkpoint.as_directory() as folder:
        student.load_state_dict(load_file(f"{folder}/model.safetensors"), strict=True)
    return student.eval()


# ---- `spectrashield train --ray-address`: decoding as Ray Data, each model's training as Ray Train -------------


def _decode_batch(batch: dict[str, np.ndarray], fn: Any, jobs: list[Any]) -> dict[str, list[str]]:
    """Ray Data: decode the jobs whose numbers are in this batch into their cache entries."""
    out = [fn(jobs[int(i)]) for i in batch["id"]]
    return {"file": [f for f, _ in out], "error": [e or "" for _, e in out]}


def decode_on_ray(fn: Any, jobs: list[Any]) -> Iterator[tuple[str, str | None]]:
    """A `FeatureCache.build` mapper: the manifest's undecoded files as a Ray Dataset, decoded by `map_batches`
    on the cluster's CPUs, each result as it arrives (the progress bar moves). Every node writes into the same
    cache folder: one machine, or shared storage."""
    import ray.data

    dataset = ray.data.range(len(jobs)).map_batches(_decode_batch, fn_kwargs={"fn": fn, "jobs": jobs}, batch_size=1,
                                                      num_cpus=1)
    for row in dataset.iter_rows():
        yield row["file"], row["error"] or None


def _train_model_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: `train_model` on its shard of every batch (`training.train.loader`, `_step`);
    rank 0 reports the bundle it wrote (every rank holds the same weights)."""
    import ray.train

    torch.set_num_threads(config["threads"])
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as folder:
        result = train_model(**config["kwargs"], save_root=Path(folder), progress=False)
        checkpoint = ray.train.Checkpoint.from_directory(str(result.path)) if rank == 0 else None
        ray.train.report({"wall_s": result.wall_s, "metrics": json.dumps(result.metrics, default=str),
                          "world_size": ray.train.get_context().get_world_size()}, checkpoint=checkpoint)


def train_on_ray(kwargs: dict[str, Any], workers: int, scratch: Path, threads: int = 1) -> TrainResult:
    """`training.train.train_model(**kwargs)` as a `TorchTrainer` of `workers` CPU workers (gloo); the bundle
    lands in `kwargs["weights_dir"]`, as in local mode. Returns its `TrainResult`."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    root = Path(kwargs.get("weights_dir") or weights_root())
    name, version = kwargs["name"], kwargs["version"]
    check_new_version(root, [name], version, kwargs.get("overwrite", False))
    trainer = TorchTrainer(
        _train_model_loop,
        train_loop_config={"kwargs": kwargs, "threads": threads},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=kwargs.get("device") == "cuda",
                                     resources_per_worker={"CPU": 1}),
        # storage_path: where the checkpoint lands; on a cluster of several machines it must be shared storage.
        run_config=RunConfig(storage_path=str(scratch / "ray_train"), name=f"train-{name}-{version}"),
    )
    result = trainer.fit()
    ran = int(result.metrics["world_size"])
    if ran != workers:  # Ray Train starts all workers or fails; a silent fallback would make this local mode
        raise RuntimeError(f"{name}: asked for {workers} Ray Train workers, {ran} trained")
    logger.info("trained %s on %d Ray Train workers", name, ran)  # the world size the workers reported
    out = root / name / version
    if out.exists():
        shutil.rmtree(out)  # only reached with overwrite (checked above)
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, out)
    return TrainResult(name=name, path=out, metrics=json.loads(result.metrics["metrics"]),
                       wall_s=float(result.metrics["wall_s"]), command=kwargs.get("command") or "")


def train_models_on_ray(
    names: list[str], kwargs: dict[str, Any], workers: int, progress: bool = True,
) -> dict[str, TrainResult]:
    """`spectrashield train NAME|all --ray-address`: the manifest decoded once by Ray Data into the feature
    cache, then each model (branches before fusion) trained by a `TorchTrainer` of `workers` workers."""
    kwargs = {**kwargs, "manifest": Path(kwargs["manifest"]).resolve()}
    for key in ("weights_dir", "cache_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key]).resolve()
    settings = kwargs["settings"]
    load_manifest_data(
        kwargs["manifest"], splits=("train", "val", "fusion"), cache_dir=kwargs.get("cache_dir"),
        decode_config=settings.decode, exclude_families=kwargs.get("exclude_families", ()), mapper=decode_on_ray,
        progress=progress,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="spectrashield-train-") as scratch:
        for name in names:
            step = {**kwargs, "name": name}
            if len(names) > 1:
                step["branch_version"] = kwargs["version"]
                step["command"] = f"{kwargs['command']} (step {name})" if kwargs.get("command") else None
            results[name] = train_on_ray(step, workers, Path(scratch))
    return results
