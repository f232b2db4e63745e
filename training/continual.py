"""Continual updates of the visual model: learn a new manipulation family from a few labelled items without
forgetting the old ones, and publish the result only as a canary.

The CompressionResilient trunk (both streams and the DAE) stays frozen; what is retrained is `classify`
(the `head`, or with `--trainable fuse` also the embedding layer) on the trunk's features of each face
crop. Three ways to learn the new items, compared by `spectrashield continual-scenario`:

- naive: fine-tune on the new items alone;
- replay: the new items plus a replay buffer of earlier data, a reservoir sample stratified by
  (source, family) under a fixed budget of items (`ReplayBuffer`; it travels with each published version);
- replay + distillation (Learning without Forgetting, Li & Hoiem 2017): as replay, plus a loss that keeps
  the previous version's outputs (temperature-softened) on the replayed and authentic items.

`spectrashield update` applies one of them to the analysts' feedback (deployments.feedback), evaluates the
old sources and the held-out set, refuses to publish a version whose old-source AUC falls by more than
`--max-forgetting` (0.02), and otherwise writes a bundle and a Serve config that serves it as a canary.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.numpy import load_file, save_file
from sklearn.metrics import roc_auc_score

from models import load_version
from models.bundle import add_to_manifest, save_bundle, weights_root
from models.compression import CompressionResilientDetector
from pipeline.config import PipelineConfig
from pipeline.tensors import images_to_tensor
from training.features import load_manifest_data
from training.manifest import ManifestEntry, write_manifest
from training.train import visual_target
from training.visual_v2 import VISUAL_KINDS

logger = logging.getLogger(__name__)

METHODS = ("naive", "replay", "distill")
TRAINABLE = {"head": ("head",), "fuse": ("fuse", "head")}
REPLAY_FILE = "replay.safetensors"


# ---- features ------------------------------------------------------------------------------------------
@dataclass
class Features:
    """Trunk features of face crops, grouped by item (a file): what `classify` is retrained on."""

    streams: np.ndarray  # (C, D) float32, one row per crop
    error: np.ndarray  # (C, 1) float32, the DAE error feature
    item: np.ndarray  # (C,) int64, the item of each crop
    labels: np.ndarray  # (N,) int64, per item: 1 fake
    strata: list[str] = field(default_factory=list)  # per item: "source/family" ("source/authentic")

    @property
    def n(self) -> int:
        return len(self.labels)

    def take(self, items: Sequence[int]) -> Features:
        items = list(items)
        rows = [np.flatnonzero(self.item == i) for i in items]
        index = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        new_item = np.concatenate([np.full(len(r), j) for j, r in enumerate(rows)]) if rows else np.zeros(0, np.int64)
        return Features(self.streams[index], self.error[index], new_item.astype(np.int64), self.labels[items],
                        [self.strata[i] for i in items])

    @staticmethod
    def join(parts: Sequence[Features]) -> Features:
        parts = [p for p in parts if p.n]
        if not parts:
            raise ValueError("nothing to join")
        offsets = np.cumsum([0] + [p.n for p in parts[:-1]])
        return Features(
            np.concatenate([p.streams for p in parts]), np.concatenate([p.error for p in parts]),
            np.concatenate([p.item + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.labels for p in parts]), [s for p in parts for s in p.strata],
        )

    def save(self, path: Path, metadata: dict[str, str] | None = None) -> None:
        save_file({"streams": self.streams, "error": self.error, "item": self.item, "labels": self.labels}, str(path),
                  metadata={"strata": json.dumps(self.strata), **(metadata or {})})

    @staticmethod
    def load(path: Path) -> Features:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            strata = json.loads(f.metadata()["strata"])
        t = load_file(str(path))
        return Features(t["streams"], t["error"], t["item"], t["labels"], strata)


def stratum(entry: ManifestEntry) -> str:
    return f"{entry.source}/{'+'.join(sorted(entry.families)) or 'authentic'}"


def manifest_features(
    model: CompressionResilientDetector, manifest: Path, splits: Sequence[str], max_crops: int = 4,
    families: Sequence[str] | None = None,
) -> tuple[Features, list[ManifestEntry]]:
    """Trunk features of the visual files of `splits` (faceless files skipped, as the served stage does)."""
    data = load_manifest_data(manifest, splits=splits, decode_config=PipelineConfig().decode, progress=False)
    parts, entries = [], []
    for split in splits:
        for i in data.indices(split, families):
            entry = data.entries[i]
            if entry.kind not in VISUAL_KINDS:
                continue
            arrays = data.arrays(i)
            pick = crop_picks(arrays.face_found, max_crops)
            if pick.size == 0:
                continue
            streams, error = crop_features(model, arrays.face_crops[pick])
            parts.append(Features(streams, error, np.zeros(len(pick), np.int64), np.array([visual_target(entry)]),
                                  [stratum(entry)]))
            entries.append(entry)
    return Features.join(parts) if parts else empty_features(model), entries


def crop_picks(face_found: np.ndarray, max_crops: int) -> np.ndarray:
    """Up to `max_crops` evenly spaced frames with a face (none: the served stage skips the file too)."""
    found = np.flatnonzero(np.asarray(face_found, bool))
    if found.size == 0:
        return found
    return np.unique(found[np.linspace(0, found.size - 1, min(found.size, max_crops)).round().astype(int)])


def empty_features(model: CompressionResilientDetector) -> Features:
    d = model.fuse[0].in_features
    return Features(np.zeros((0, d), np.float32), np.zeros((0, 1), np.float32), np.zeros(0, np.int64),
                    np.zeros(0, np.int64), [])


@torch.no_grad()
def crop_features(model: CompressionResilientDetector, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    streams, error, _, _ = model.trunk(images_to_tensor(crops))
    return streams.float().numpy(), error.float().numpy()


# ---- the replay buffer ---------------------------------------------------------------------------------
class ReplayBuffer:
    """A fixed budget of items, a reservoir sample per stratum (source/family), the budget split evenly
    across the strata seen so far: a rare old family keeps its share however much a new one brings."""

    def __init__(self, budget: int, seed: int = 0) -> None:
        self.budget, self.rng = budget, np.random.default_rng(seed)
        self.kept: dict[str, list[Features]] = {}  # stratum -> its items (one-item Features each)
        self.seen: dict[str, int] = {}

    def add(self, features: Features) -> None:
        for i in range(features.n):
            s = features.strata[i]
            self.seen[s] = self.seen.get(s, 0) + 1
            kept = self.kept.setdefault(s, [])
            cap = max(1, self.budget // len(self.kept))
            if len(kept) < cap:
                kept.append(features.take([i]))
            else:
                j = int(self.rng.integers(self.seen[s]))  # reservoir: item i survives with probability cap / seen
                if j < cap:
                    kept[j] = features.take([i])
        cap = max(1, self.budget // max(1, len(self.kept)))
        for s, kept in self.kept.items():  # a new stratum shrinks the others' shares
            if len(kept) > cap:
                self.kept[s] = [kept[j] for j in sorted(self.rng.choice(len(kept), cap, replace=False))]

    def features(self) -> Features:
        return Features.join([f for kept in self.kept.values() for f in kept])

    def __len__(self) -> int:
        return sum(len(k) for k in self.kept.values())

    def save(self, path: Path) -> None:
        self.features().save(path, {"seen": json.dumps(self.seen), "budget": str(self.budget)})

    @staticmethod
    def load(path: Path, seed: int = 0) -> ReplayBuffer:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        buffer = ReplayBuffer(int(meta["budget"]), seed)
        features = Features.load(path)
        for i in range(features.n):
            buffer.kept.setdefault(features.strata[i], []).append(features.take([i]))
        buffer.seen = {k: int(v) for k, v in json.loads(meta["seen"]).items()}
        return buffer


# ---- learning ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpdateParams:
    method: str = "distill"
    trainable: str = "head"
    epochs: int = 200
    lr: float = 3e-3
    weight_decay: float = 1e-4
    distill_weight: float = 1.0
    temperature: float = 2.0
    seed: int = 0


def item_logits(model: CompressionResilientDetector, f: Features, grad: bool = False) -> torch.Tensor:
    """Per-item logit: the mean of its crops' logits, as the served visual stage scores a file."""
    with torch.set_grad_enabled(grad):
        crop, _ = model.classify(torch.from_numpy(f.streams), torch.from_numpy(f.error))
        item = torch.from_numpy(f.item)
        total = torch.zeros(f.n).index_add(0, item, crop)
        return total / torch.bincount(item, minlength=f.n).clamp(min=1)


@dataclass
class UpdateProblem:
    """What `update` optimises: the items, their labels and, for distillation, the previous version's
    softened outputs on the items to keep. The loss is written as sums over items divided by totals, so
    shards of it (`shard`) on several workers add up, gradient for gradient, to the whole."""

    data: Features
    labels: torch.Tensor  # (N,) float
    kept: torch.Tensor  # (N,) bool: items whose previous outputs are distilled
    target: torch.Tensor  # (N,) the previous version's sigmoid(logit / T) (used where kept)

    def totals(self) -> torch.Tensor:
        """[authentic items, fake items, kept items]: the denominators of the loss."""
        return torch.stack([(self.labels == 0).sum(), (self.labels == 1).sum(), self.kept.sum()]).float()

    def shard(self, rank: int, world: int) -> UpdateProblem:
        items = list(range(rank, self.data.n, world))
        return UpdateProblem(self.data.take(items), self.labels[items], self.kept[items], self.target[items])

    def loss(self, student: CompressionResilientDetector, totals: torch.Tensor, p: UpdateParams) -> torch.Tensor:
        """Balanced BCE (each class's mean, averaged over the classes present) plus the distillation term."""
        logits = item_logits(student, self.data, grad=True)
        losses = F.binary_cross_entropy_with_logits(logits, self.labels, reduction="none")
        present = [c for c in (0, 1) if totals[c] > 0]
        loss = sum(losses[self.labels == c].sum() / totals[c] for c in present) / len(present)
        if totals[2] > 0:
            soft = F.binary_cross_entropy_with_logits(logits[self.kept] / p.temperature, self.target[self.kept],
                                                      reduction="sum")
            loss = loss + p.distill_weight * p.temperature**2 * soft / totals[2]
        return loss


def update_problem(model: CompressionResilientDetector, new: Features, replay: Features | None,
                   p: UpdateParams) -> UpdateProblem:
    if p.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    data = new if p.method == "naive" or replay is None or not replay.n else Features.join([new, replay])
    kept = torch.zeros(data.n, dtype=torch.bool)
    if p.method == "distill" and replay is not None and replay.n:
        # What the previous version said on everything but the new fakes: the knowledge to keep.
        kept = torch.tensor([i >= new.n or data.labels[i] == 0 for i in range(data.n)])
    with torch.no_grad():
        target = torch.sigmoid(item_logits(model.eval(), data) / p.temperature)
    return UpdateProblem(data, torch.from_numpy(data.labels).float(), kept, target)


def set_trainable(model: CompressionResilientDetector, trainable: str) -> list[torch.nn.Parameter]:
    """Only the layers `TRAINABLE[trainable]` learn; returns their parameters."""
    for param in model.parameters():
        param.requires_grad_(False)
    params = [q for name in TRAINABLE[trainable] for q in getattr(model, name).parameters()]
    for q in params:
        q.requires_grad_(True)
    return params


def trainable_copy(model: CompressionResilientDetector, p: UpdateParams) -> tuple[CompressionResilientDetector, list]:
    """A copy of `model` (eval: dropout off, the features fixed) with only `p.trainable`'s layers learning."""
    student = copy.deepcopy(model).eval()
    return student, set_trainable(student, p.trainable)


def update(
    model: CompressionResilientDetector, new: Features, replay: Features | None, p: UpdateParams,
) -> CompressionResilientDetector:
    """A copy of `model` whose `classify` learnt `new` (with `replay` unless naive); the trunk is untouched.
    Full-batch AdamW; `training.distributed.update_on_ray` runs the same steps on Ray Train workers."""
    problem = update_problem(model, new, replay, p)
    student, _ = fit(model, problem, problem.totals(), p)
    return student


def fit(
    model: CompressionResilientDetector, part: UpdateProblem, totals: torch.Tensor, p: UpdateParams,
    reduce: Callable[[list[torch.nn.Parameter]], None] | None = None,
) -> tuple[CompressionResilientDetector, float]:
    """`p.epochs` full-batch AdamW steps of a copy of `model` on `part` of the problem (`totals`: the whole
    problem's); `reduce` sums the parts' gradients when several workers hold one part each. (copy, last loss)"""
    torch.manual_seed(p.seed)
    student, params = trainable_copy(model, p)
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    loss = torch.zeros(())
    for _ in range(p.epochs):
        loss = part.loss(student, totals, p) if part.data.n else sum(q.sum() * 0 for q in params)
        optimizer.zero_grad()
        loss.backward()
        if reduce is not None:
            reduce(params)
        optimizer.step()
    for q in student.parameters():
        q.requires_grad_(False)
    return student, float(loss.detach())


def auc(model: CompressionResilientDetector, f: Features) -> float | None:
    if f.n == 0 or len(set(f.labels.tolist())) < 2:
        return None
    with torch.no_grad():
        return float(roc_auc_score(f.labels, item_logits(model, f).numpy()))


def split_items(f: Features, where: Sequence[bool]) -> Features:
    return f.take([i for i in range(f.n) if where[i]])


# ---- the scripted scenario -----------------------------------------------------------------------------
@dataclass
class ScenarioData:
    """The old families (train/val and test) and the new family's pool, shuffled once by the seed."""

    model: CompressionResilientDetector
    old_train: Features
    old_test: Features
    pool: Features  # every visual item of the new manifest
    fakes: np.ndarray  # pool indices of the new family's fakes, shuffled
    authentic: np.ndarray  # pool indices of its authentic items, shuffled


def scenario_data(args: argparse.Namespace) -> ScenarioData:
    torch.set_num_threads(args.threads)
    model = load_version("compression_resilient", args.base, root=args.weights_dir).model.eval()
    old_train, _ = manifest_features(model, args.old, ("train", "val"))
    old_test, _ = manifest_features(model, args.old, ("test",))
    pool, _ = manifest_features(model, args.new, ("train", "val", "fusion", "test"))
    rng = np.random.default_rng(args.seed)
    is_new_fake = np.array([s.endswith(f"/{args.new_family}") for s in pool.strata])
    return ScenarioData(model, old_train, old_test, pool, rng.permutation(np.flatnonzero(is_new_fake)),
                        rng.permutation(np.flatnonzero(pool.labels == 0)))


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Old families from `--old`; `--new-family` items of `--new` arrive k at a time as feedback."""
    data = scenario_data(args)
    model, old_train, old_test, pool, authentic = data.model, data.old_train, data.old_test, data.pool, data.authentic
    feedback_pool, held_fakes = data.fakes[: max(args.k)], data.fakes[max(args.k):]
    new_test = Features.join([pool.take(held_fakes), pool.take(authentic), old_test.take(np.flatnonzero(old_test.labels == 0))])
    buffer = ReplayBuffer(args.replay_budget, args.seed)
    buffer.add(old_train)
    replay = buffer.features()

    report: dict[str, Any] = {
        "base": args.base, "new_family": args.new_family, "trainable": args.trainable,
        "replay_items": len(buffer), "replay_strata": {s: len(v) for s, v in sorted(buffer.kept.items())},
        "old_test_items": old_test.n, "new_test": {"fakes": len(held_fakes), "authentic": new_test.n - len(held_fakes)},
        "before": {"old_auc": auc(model, old_test), "new_auc": auc(model, new_test)}, "runs": [],
    }
    for k in args.k:
        new = pool.take(feedback_pool[:k])
        for method in METHODS:
            student = update(model, new, replay, UpdateParams(method=method, trainable=args.trainable, seed=args.seed))
            old_auc, new_auc = auc(student, old_test), auc(student, new_test)
            report["runs"].append({"k": k, "method": method, "old_auc": old_auc, "new_auc": new_auc,
                                   "old_drop": report["before"]["old_auc"] - old_auc})
            logger.info("k=%d %s: old %.3f new %.3f", k, method, old_auc, new_auc)
    return report


def scenario_markdown(report: dict[str, Any], command: str) -> str:
    b = report["before"]
    lines = [
        (f"Continual update of compression_resilient/{report['base']} ({report['trainable']} retrained, trunk frozen) "
         f"learning `{report['new_family']}` from k feedback items."),
        "", f"Command: `{command}`", "",
        (f"Replay buffer: {report['replay_items']} items over {len(report['replay_strata'])} strata. "
         f"Old test items: {report['old_test_items']}; new test: {report['new_test']['fakes']} held-out "
         f"`{report['new_family']}` fakes vs {report['new_test']['authentic']} authentic."), "",
        f"Before: old-families AUC {b['old_auc']:.3f}, new-family AUC {b['new_auc']:.3f}.", "",
        "| k | method | new-family AUC | old-families AUC | old drop |", "|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['k']} | {r['method']} | {r['new_auc']:.3f} | {r['old_auc']:.3f} | {r['old_drop']:+.3f} |")
    return "\n".join(lines) + "\n"


def scenario_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spectrashield continual-scenario", description=scenario.__doc__)
    scenario_arguments(parser)
    parser.add_argument("--trainable", choices=sorted(TRAINABLE), default="head")
    parser.add_argument("--replay-budget", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = scenario(args)
    write_report(args.out, report, scenario_markdown(report, command_line("continual-scenario", argv)))


def scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `scenario_data` reads, shared by the continual and meta-learning scenarios."""
    parser.add_argument("--old", type=Path, required=True, help="manifest of the old families (train/val/test)")
    parser.add_argument("--new", type=Path, required=True, help="manifest holding the new family")
    parser.add_argument("--new-family", required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--base", default="v2")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0, help="the data shuffle")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--out", type=Path, required=True, help="report.json and report.md go here")


def command_line(command: str, argv: Sequence[str] | None) -> str:
    return shlex.join(["spectrashield", command, *(argv if argv is not None else sys.argv[1:])])


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """report.json and report.md in `out`, and the markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown)
    print(markdown)


# ---- `spectrashield update`: feedback -> a new version, published as a canary or refused ------------------
def feedback_manifest(feedback_dir: Path, out: Path) -> int:
    """A training manifest of the feedback items that kept their media (source "feedback", split train)."""
    from deployments.feedback import FeedbackStore
    from media.config import DecodeConfig
    from media.decode import decode_media

    store = FeedbackStore(feedback_dir)
    entries = []
    for item in store.items(limit=1_000_000):
        path = store.media_path(item)
        if path is None or not path.is_file():
            continue
        kind = decode_media(path.read_bytes(), DecodeConfig(analyze_faces=False)).meta.kind  # the upload's own kind
        fake = item["label"] == "fake"
        entries.append(ManifestEntry(
            path=os.path.relpath(path, out.parent), label=int(fake), kind=kind,
            families=[item["family"] or "unspecified"] if fake else [], split="train", source="feedback",
            group=item["sha256"], meta={"feedback_id": item["id"], "key_name": item["key_name"]},
        ))
    return write_manifest(entries, out)


def canary_config(serve_config: Path, version: str, fraction: float) -> dict[str, Any]:
    """`serve_config` with CompressionResilient serving `version` as a canary to `fraction` of requests."""
    config = yaml.safe_load(serve_config.read_text())
    for app in config["applications"]:
        for d in app.get("deployments", []):
            if d["name"] == "CompressionResilient":
                d.setdefault("user_config", {})["canary"] = {"version": version, "fraction": fraction}
                return config
    raise ValueError(f"{serve_config} has no CompressionResilient deployment")


def update_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spectrashield update",
        description="Learn the analysts' feedback into a new visual model version (replay + distillation by default); "
        "publish it with a canary Serve config, or refuse when it forgets the old sources.",
    )
    parser.add_argument("--feedback", type=Path, required=True, help="the feedback store (<jobs_dir>/feedback)")
    parser.add_argument("--from", dest="base", default="v2", help="the compression_resilient version to update")
    parser.add_argument("--version", required=True, help="the new version's name")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--replay-manifest", type=Path, default=None,
                        help="earlier training data (train/val) for the replay buffer when the base version has none")
    parser.add_argument("--eval-manifest", type=Path, required=True, help="old sources' test split: the forgetting check")
    parser.add_argument("--method", choices=METHODS, default="distill")
    parser.add_argument("--replay-budget", type=int, default=200)
    parser.add_argument("--max-forgetting", type=float, default=0.02, help="largest old-source AUC drop allowed")
    parser.add_argument("--serve-config", type=Path, default=Path("cluster/serve.cpu.yaml"))
    parser.add_argument("--canary-fraction", type=float, default=0.1)
    parser.add_argument("--out-config", type=Path, default=None, help="default: serve.<version>.canary.yaml here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-address", default=None,
                        help="run feature extraction (Ray Data) and the update (Ray Train) on this Ray cluster")
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray Train workers and Ray Data actors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    root = args.weights_dir or weights_root()
    target = root / "compression_resilient" / args.version
    if target.exists():
        raise SystemExit(f"{target} exists: choose another --version")
    base = load_version("compression_resilient", args.base, root=root)
    work = target.with_name(f".{args.version}.work")  # the feedback manifest and Ray Train's checkpoint
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _update(args, argv, base, target, work, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _update(args: argparse.Namespace, argv: Sequence[str] | None, base: Any, target: Path, work: Path,
            started: float) -> int:
    model: CompressionResilientDetector = base.model.eval()
    if args.ray_address:
        from training import distributed

        distributed.connect(args.ray_address)

        def features(manifest: Path, splits: tuple[str, ...]) -> Features:
            return distributed.manifest_features_on_ray(manifest, splits, args.base, args.weights_dir,
                                                        actors=args.ray_workers)
    else:
        def features(manifest: Path, splits: tuple[str, ...]) -> Features:
            return manifest_features(model, manifest, splits)[0]
    n_items = feedback_manifest(args.feedback, work / "feedback.jsonl")
    new = features(work / "feedback.jsonl", ("train",))
    if new.n == 0:
        raise SystemExit("no feedback item with media and a face to learn from")
    replay_path = base.path / REPLAY_FILE
    if replay_path.is_file():
        buffer = ReplayBuffer.load(replay_path, args.seed)
    elif args.replay_manifest is not None:
        buffer = ReplayBuffer(args.replay_budget, args.seed)
        buffer.add(features(args.replay_manifest, ("train", "val")))
    else:
        raise SystemExit(f"{args.base} has no {REPLAY_FILE}: give --replay-manifest (its training data)")
    params = UpdateParams(method=args.method, seed=args.seed)
    replay = buffer.features() if len(buffer) else None
    if args.ray_address:
        student = distributed.update_on_ray(model, new, replay, params, args.ray_workers, work)
    else:
        student = update(model, new, replay, params)

    old_test = features(args.eval_manifest, ("test",))
    scores = {"old_auc_before": auc(model, old_test), "old_auc_after": auc(student, old_test),
              "feedback_auc_before": auc(model, new), "feedback_auc_after": auc(student, new)}
    drop = (scores["old_auc_before"] or 0.0) - (scores["old_auc_after"] or 0.0)
    summary = json.dumps({**scores, "feedback_items": n_items, "learnt_items": new.n, "replay_items": len(buffer)})
    if drop > args.max_forgetting:
        print(f"refused: the old sources' AUC falls by {drop:.3f} (> {args.max_forgetting}); nothing published. {summary}")
        return 3

    buffer.add(new)  # the next update replays these too
    command = command_line("update", argv)
    card = (
        f"# compression_resilient/{args.version}\n\nA continual update of compression_resilient/{args.base} "
        f"(`head` retrained, trunk frozen, method {args.method}) on {new.n} analyst feedback items of "
        f"{args.feedback} (their own media; the licence is the submitter's), with a replay buffer of "
        f"{len(buffer)} items from {', '.join(sorted(buffer.kept))}.\n\nCommand: `{command}`\n\n"
        f"Scores: {summary}\n\nOld-source AUC drop {drop:+.3f} (limit {args.max_forgetting}). The trunk and its "
        f"out-of-distribution statistics are {args.base}'s.\n"
    )
    save_bundle(student, target, arch=base.arch, config=base.config, trained=True, card_text=card,
                extra={"continual": {"from": args.base, "method": args.method, **scores}})
    if base.ood is not None:  # the embedding is unchanged (only the head learnt): the base's statistics hold
        (target / "ood.safetensors").write_bytes((base.path / "ood.safetensors").read_bytes())
        add_to_manifest(target, "ood.safetensors")
    buffer.save(target / REPLAY_FILE)
    add_to_manifest(target, REPLAY_FILE)
    out_config = args.out_config or Path(f"serve.{args.version}.canary.yaml")
    out_config.write_text(yaml.safe_dump(canary_config(args.serve_config, args.version, args.canary_fraction), sort_keys=False))
    print(f"published {target} ({time.perf_counter() - started:.0f} s); canary config {out_config}: "
          f"`serve deploy {out_config}`. {summary}")
    return 0
