"""Meta-learned adaptability: Reptile (Nichol et al. 2018, first-order) over manipulation families as tasks,
against ordinary pre-training on the same data, compared on the k-shot adaptation curve of a held-back family.

Both start from the served version's `classify` (embedding layer and head over the frozen trunk's features,
as `training.continual` updates it) and see the same old-family items for the same number of steps:

- ordinary pre-training: Adam on batches mixing every old family and authentic items;
- Reptile: each outer step samples one family (its fakes against authentic items), adapts a copy for a few
  inner Adam steps, and moves the parameters a fraction of the way towards the adapted copy.

Then each is fine-tuned on k fakes of the new family and k authentic items (k = 5, 10, 20, 50, a few seeds)
and scored on the held-out new-family fakes against the remaining authentic items, and on the old test set.
`spectrashield meta-scenario` writes report.json and report.md; keep Reptile only if it wins.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.compression import CompressionResilientDetector
from training.continual import (
    TRAINABLE,
    Features,
    auc,
    command_line,
    item_logits,
    scenario_arguments,
    scenario_data,
    set_trainable,
    write_report,
)
from training.visual_v2 import balanced_bce


def _steps(model: CompressionResilientDetector, f: Features, steps: int, lr: float, batch: int,
           rng: np.random.Generator) -> None:
    """Adam on balanced BCE over random batches of `f`'s items."""
    optimizer = torch.optim.Adam(set_trainable(model, "fuse"), lr=lr)
    labels = torch.from_numpy(f.labels).float()
    for _ in range(steps):
        pick = rng.choice(f.n, min(batch, f.n), replace=False)
        part = f.take(pick)
        loss = balanced_bce(item_logits(model, part, grad=True), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def family_tasks(old: Features) -> dict[str, Features]:
    """One task per manipulation family: its fakes (alone or combined with another) against authentic items."""
    authentic = [i for i, s in enumerate(old.strata) if s.endswith("/authentic")]
    families = sorted({fam for s in old.strata if not s.endswith("/authentic") for fam in s.split("/", 1)[1].split("+")})
    tasks = {}
    for fam in families:
        fakes = [i for i, s in enumerate(old.strata) if fam in s.split("/", 1)[1].split("+")]
        tasks[fam] = old.take(fakes + authentic)
    return tasks


def pretrain(model: CompressionResilientDetector, old: Features, steps: int, seed: int, lr: float = 1e-3,
             batch: int = 64) -> CompressionResilientDetector:
    student = copy.deepcopy(model).eval()
    _steps(student, old, steps, lr, batch, np.random.default_rng(seed))
    return student


def reptile(model: CompressionResilientDetector, old: Features, steps: int, seed: int, inner_steps: int = 5,
            inner_lr: float = 1e-3, outer_lr: float = 0.5, batch: int = 32) -> CompressionResilientDetector:
    """`steps` counts inner steps in all, so both methods take as many gradient steps."""
    rng = np.random.default_rng(seed)
    tasks = list(family_tasks(old).values())
    meta = copy.deepcopy(model).eval()
    names = [n for n, _ in meta.named_parameters() if n.split(".")[0] in TRAINABLE["fuse"]]
    for _ in range(max(1, steps // inner_steps)):
        task = tasks[int(rng.integers(len(tasks)))]
        fast = copy.deepcopy(meta)
        _steps(fast, task, inner_steps, inner_lr, batch, rng)
        fast_params = dict(fast.named_parameters())
        with torch.no_grad():
            for n, q in meta.named_parameters():
                if n in names:
                    q.add_(outer_lr * (fast_params[n] - q))
    return meta


def adapt_curve(init: CompressionResilientDetector, support: Features, k_fakes: np.ndarray, k_real: np.ndarray,
                new_test: Features, old_test: Features, ks: Sequence[int], seed: int, steps: int = 100,
                lr: float = 1e-3) -> list[dict[str, float]]:
    rows = []
    for k in ks:
        student = copy.deepcopy(init).eval()
        if k:  # k = 0: the initialisation as it is
            shots = support.take(list(k_fakes[:k]) + list(k_real[:k]))
            _steps(student, shots, steps, lr, 2 * k, np.random.default_rng(seed))
        rows.append({"k": k, "new_auc": auc(student, new_test), "old_auc": auc(student, old_test)})
    return rows


def meta_scenario(args: argparse.Namespace) -> dict[str, Any]:
    data = scenario_data(args)
    top = max(args.k)
    support = data.pool
    k_fakes, k_real = data.fakes[:top], data.authentic[:top]
    new_test = support.take(list(data.fakes[top:]) + list(data.authentic[top:]))
    report: dict[str, Any] = {"new_family": args.new_family, "steps": args.steps, "seeds": args.seeds,
                              "tasks": sorted(family_tasks(data.old_train)), "new_test_items": new_test.n, "runs": []}
    for seed in range(args.seeds):
        inits = {"pretrain": pretrain(data.model, data.old_train, args.steps, seed),
                 "reptile": reptile(data.model, data.old_train, args.steps, seed)}
        for name, init in inits.items():
            for row in adapt_curve(init, support, np.random.default_rng(seed).permutation(k_fakes),
                                   np.random.default_rng(seed + 100).permutation(k_real), new_test, data.old_test,
                                   [0, *args.k], seed):
                report["runs"].append({"init": name, "seed": seed, **row})
    return report


def meta_markdown(report: dict[str, Any], command: str) -> str:
    lines = [(f"k-shot adaptation to `{report['new_family']}` from ordinary pre-training vs Reptile over the old "
              f"families ({', '.join(report['tasks'])}); {report['steps']} gradient steps each, mean ± sd over "
              f"{report['seeds']} seeds; new test {report['new_test_items']} items; k = 0 is before adapting."),
             "", f"Command: `{command}`", "",
             "| k | pre-training: new AUC | Reptile: new AUC | pre-training: old AUC | Reptile: old AUC |",
             "|---|---|---|---|---|"]
    for k in sorted({r["k"] for r in report["runs"]}):
        cell = {}
        for init in ("pretrain", "reptile"):
            for m in ("new_auc", "old_auc"):
                v = np.array([r[m] for r in report["runs"] if r["k"] == k and r["init"] == init])
                cell[init, m] = f"{v.mean():.3f} ± {v.std():.3f}"
        lines.append(f"| {k} | {cell['pretrain', 'new_auc']} | {cell['reptile', 'new_auc']} | "
                     f"{cell['pretrain', 'old_auc']} | {cell['reptile', 'old_auc']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="spectrashield meta-scenario", description=__doc__.split("\n\n")[0])
    scenario_arguments(parser)
    parser.add_argument("--steps", type=int, default=500, help="gradient steps of each pre-training")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    report = meta_scenario(args)
    write_report(args.out, report, meta_markdown(report, command_line("meta-scenario", argv)))
