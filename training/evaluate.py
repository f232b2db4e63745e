"""Evaluate the served verdict and every branch on a manifest split; baselines; leave-one-family-out.

Two ways to score files, one report:

- in-process: the served graph's stages without Ray (`training.features.run_branches`, with
  triage's early exit applied to the verdict exactly as the ingress applies it);
- against a running service: POST each file to `<url>/v1/analyze` and read
  `fake_probability` and `modalities.*.score`.

Metrics come from `sklearn.metrics` (AUC, ROC for the EER, accuracy, F1, Brier, confusion
matrix for FAR/FRR) and `sklearn.calibration.calibration_curve` (ECE from its bins). FAR is
the share of fakes accepted as authentic, FRR the share of authentic files rejected as
fake, both at the Fusion deployment's decision threshold. Per family means that family's
fakes against every authentic file; per compression means all files at that level.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import bootstrap, rankdata
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from models.bundle import update_card, weights_root

from pipeline.analyze import ABSTAINED
from pipeline.config import PipelineConfig
from pipeline.local import LocalPipeline
from training.features import (
    MODALITIES,
    ManifestData,
    load_manifest_data,
    load_pipeline,
    run_branches,
    run_fusion,
    served_answer,
    served_probability,
)
from training.manifest import ManifestEntry, read_manifest
from training.train import Preset, train_all

if TYPE_CHECKING:
    import httpx

METRIC_KEYS = (
    "n", "n_pos", "n_neg", "threshold", "auc", "eer", "eer_threshold",
    "accuracy", "f1", "brier", "ece", "far", "frr",
)
N_BINS = 10
SCORES_FILE = "scores.jsonl"  # one `ScoredFile` per line in an eval's output directory


# ---- metrics -----------------------------------------------------------------------------------


def equal_error_rate(labels: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """(EER, threshold) at the ROC point where false-positive and false-negative rates meet."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0), float(min(thresholds[i], 1.0))


def expected_calibration_error(labels: Sequence[int], probs: Sequence[float], n_bins: int = N_BINS) -> float:
    """Bin-size-weighted |observed - predicted| over `calibration_curve`'s uniform bins.

    `calibration_curve` drops empty bins and does not return counts; counting with its own
    bin edges (`searchsorted` on the inner edges) recovers the weights of the bins it kept.
    """
    p = np.asarray(probs, float)
    prob_true, prob_pred = calibration_curve(labels, p, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / p.size * np.abs(prob_true - prob_pred)))


N_RESAMPLES = 2000  # bootstrap resamples for an interval, and label draws for the calibrated reference


def _rank_auc(negatives: np.ndarray, positives: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC as the Mann-Whitney statistic from ranks (ties averaged, so counted half), vectorised over
    the other axes."""
    neg, pos = np.moveaxis(negatives, axis, -1), np.moveaxis(positives, axis, -1)
    n_neg, n_pos = neg.shape[-1], pos.shape[-1]
    ranks = rankdata(np.concatenate([neg, pos], axis=-1), axis=-1)[..., n_neg:]
    return (ranks.sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_interval(labels: Sequence[int], probs: Sequence[float], confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the AUC, resampling authentic and fake files separately (so
    every resample has both classes); None with fewer than two files of either class. On the
    independent benchmark's 20 authentic and 19 fake videos (seed 0 set, the served weights) video AUC
    0.884 has the interval 0.77-0.97: an AUC measured on so few files says little about its second
    decimal."""
    y = np.asarray(labels, int)
    p = np.asarray(probs, float)
    negatives, positives = p[y == 0], p[y == 1]
    if negatives.size < 2 or positives.size < 2:
        return None
    result = bootstrap(
        (negatives, positives), _rank_auc, vectorized=True, paired=False, confidence_level=confidence,
        n_resamples=N_RESAMPLES, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _rank_auc_difference(negatives: np.ndarray, positives: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC of scorer A minus AUC of scorer B, each class given as a (2, ..., n) array: scorer on the first
    axis (A, B), files on `axis` (`scipy.stats.bootstrap` puts its resamples between the two)."""
    return _rank_auc(negatives[0], positives[0], axis) - _rank_auc(negatives[1], positives[1], axis)


def paired_auc_difference(
    labels: Sequence[int], probs_a: Sequence[float], probs_b: Sequence[float], confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any] | None:
    """AUC(A) - AUC(B) on the same files with a paired bootstrap interval: each resample draws authentic
    files and fakes apart, and both scorers are read on the same draw, so what the files share cancels.
    Also the share of resamples in which A ranks better. None with fewer than two files of a class.

    Far tighter than comparing two separate intervals: on the independent benchmark's 200-video sample,
    Fusion v7 against v6 is +0.027 with the interval -0.005 to +0.059, while each AUC alone spans
    about ±0.06."""
    y = np.asarray(labels, int)
    a, b = np.asarray(probs_a, float), np.asarray(probs_b, float)
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"labels and both scorers need one value per file, got {y.shape}, {a.shape}, {b.shape}")
    negatives, positives = np.stack([a[y == 0], b[y == 0]]), np.stack([a[y == 1], b[y == 1]])
    if negatives.shape[1] < 2 or positives.shape[1] < 2:
        return None
    result = bootstrap(
        (negatives, positives), _rank_auc_difference, vectorized=True, paired=False, axis=-1,
        confidence_level=confidence, n_resamples=N_RESAMPLES, method="percentile", rng=np.random.default_rng(seed),
    )
    return {
        "difference": float(_rank_auc_difference(negatives, positives)),
        "ci95": (float(result.confidence_interval.low), float(result.confidence_interval.high)),
        "share_a_ahead": float(np.mean(result.bootstrap_distribution > 0)),
        "n_authentic": int(negatives.shape[1]), "n_fake": int(positives.shape[1]),
    }


def compare_runs(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Two `spectrashield eval` outputs (`scores.jsonl`, in process or from a service) of the same files,
    paired by path: the AUC difference A - B with a paired interval, over all files and over videos,
    and how each side's verdicts changed between them (authentic files and fakes apart). Files either
    side left without a probability are left out of the AUCs and counted."""
    def read(run: Path) -> dict[str, ScoredFile]:
        path = Path(run) / SCORES_FILE if Path(run).is_dir() else Path(run)
        return {f.path: f for f in (ScoredFile(**json.loads(line)) for line in path.read_text().splitlines() if line)}

    a, b = read(run_a), read(run_b)
    shared = sorted(set(a) & set(b))
    differ = [p for p in shared if (a[p].label, a[p].kind) != (b[p].label, b[p].kind)]
    if differ:
        raise ValueError(f"{len(differ)} paths name different files in the two runs (label or kind differ, "
                         f"e.g. {differ[0]}): were they made from the same manifest?")
    both = [p for p in shared if a[p].fake_probability is not None and b[p].fake_probability is not None]
    out: dict[str, Any] = {
        "a": str(run_a), "b": str(run_b), "files_a": len(a), "files_b": len(b), "paired": len(shared),
        "unanswered_by_either": len(shared) - len(both),
    }
    for name, keep in (("all", lambda f: True), ("video", lambda f: f.kind == "video")):
        chosen = [p for p in both if keep(a[p])]
        out[f"auc_difference_{name}"] = paired_auc_difference(
            [a[p].label for p in chosen], [a[p].fake_probability for p in chosen], [b[p].fake_probability for p in chosen],
        )
    for label, name in ((0, "authentic"), (1, "fake")):
        moves = Counter(f"{a[p].verdict} -> {b[p].verdict}" for p in shared if a[p].label == label)
        out[f"verdicts_{name}"] = dict(sorted(moves.items()))
    return out


def format_comparison(comparison: Mapping[str, Any]) -> str:
    """`compare_runs` as lines of text."""
    lines = [f"A: {comparison['a']}", f"B: {comparison['b']}",
             f"paired files {comparison['paired']} (without a probability on either side: "
             f"{comparison['unanswered_by_either']})"]
    for name in ("all", "video"):
        d = comparison[f"auc_difference_{name}"]
        lines.append(f"AUC A - B, {name}: " + ("-" if d is None else (
            f"{d['difference']:+.3f} (95 % paired interval {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}; "
            f"A ahead in {100 * d['share_a_ahead']:.1f} % of resamples; {d['n_authentic']} authentic, {d['n_fake']} fake)"
        )))
    for name in ("authentic", "fake"):
        moves = comparison[f"verdicts_{name}"]
        lines.append(f"verdicts of {name} files, A -> B: " + (", ".join(f"{k} {v}" for k, v in moves.items()) or "-"))
    return "\n".join(lines)


def calibrated_ece(probs: Sequence[float], seed: int = 0) -> tuple[float, float] | None:
    """(median, 90th percentile) of the ECE that a perfectly calibrated model would show on these
    probabilities: labels drawn from the probabilities themselves, `N_RESAMPLES` times. It is the
    floor that sampling alone puts under a measured ECE: on the 34 files that same set answers, it is
    0.089 (90th percentile 0.142), so an ECE target of 0.05 cannot be told from calibration there.
    None without probabilities."""
    p = np.clip(np.asarray(probs, float), 0.0, 1.0)
    if p.size == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = [expected_calibration_error((rng.random(p.size) < p).astype(int), p) for _ in range(N_RESAMPLES)]
    return float(np.median(draws)), float(np.percentile(draws, 90))


def binary_metrics(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Every key of METRIC_KEYS; a value is None where it is undefined (AUC with one class, FAR without fakes)."""
    y = np.asarray(labels, int)
    p = np.clip(np.asarray(probs, float), 0.0, 1.0)
    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out.update(n=int(y.size), n_pos=int((y == 1).sum()), n_neg=int((y == 0).sum()), threshold=float(threshold))
    if y.size == 0:
        return out
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    out.update(
        accuracy=float(accuracy_score(y, pred)),
        f1=float(f1_score(y, pred, labels=[0, 1], zero_division=0.0)),
        brier=float(brier_score_loss(y, p, pos_label=1)),
        ece=expected_calibration_error(y, p),
        far=float(fn / (fn + tp)) if fn + tp else None,
        frr=float(fp / (fp + tn)) if fp + tn else None,
    )
    if out["n_pos"] and out["n_neg"]:
        out["auc"] = float(roc_auc_score(y, p))
        out["eer"], out["eer_threshold"] = equal_error_rate(y, p)
    return out


# ---- scoring -------------------------------------------------------------------------------------


@dataclass
class ScoredFile:
    """One file's answer: the verdict probability, each branch's score and per-frame/per-crop scores."""

    path: str
    label: int
    families: list[str]
    compression: str
    kind: str
    fake_probability: float | None  # what the service answers; None when the file failed
    early_exit: bool = False
    branch_scores: dict[str, float] = field(default_factory=dict)
    item_scores: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None
    verdict: str | None = None  # "fake" / "real" / "uncertain", as the service answers
    reasons: list[str] = field(default_factory=list)  # codes of the decisive reasons (why `uncertain`)

    @classmethod
    def of(cls, entry: ManifestEntry, **kwargs: Any) -> ScoredFile:
        return cls(entry.path, entry.label, list(entry.families), entry.compression, entry.kind, **kwargs)


def score_in_process(
    models: LocalPipeline, data: ManifestData, indices: Sequence[int],
    *, progress: bool = True, desc: str = "score",
) -> list[ScoredFile]:
    """Every branch runs (for branch metrics and baselines); the verdict honours triage's early exit."""
    if "fusion" not in models.bundles:
        raise ValueError("evaluation needs the fusion model")
    reads = [name for name, _ in models.model("fusion").config.modalities]  # what fusion's gate weights name
    scored = []
    for i in tqdm(indices, desc=desc, unit="file", disable=not progress):
        entry = data.entries[i]
        run = run_branches(models, data.arrays(i), honour_early_exit=False)
        if not run.features:
            abstained = run.analysis is not None and any(b.code in ABSTAINED for b in run.analysis.branches())
            scored.append(ScoredFile.of(
                entry, fake_probability=None, error="no branch could run",
                verdict="uncertain" if abstained else None,  # served: 200 uncertain (a model abstained), else 422
                reasons=["no_usable_modality"] if abstained else [],
            ))
            continue
        fused = float(run_fusion(models, [run])[0])
        probability = served_probability(run, fused)
        verdict, reasons = served_answer(run, fused, models.config.verdict, reads)
        scored.append(ScoredFile.of(
            entry,
            fake_probability=probability,
            early_exit=run.early_exit is not None,
            branch_scores=dict(run.scores),
            item_scores={m: [float(v) for v in s] for m, s in run.item_scores.items()},
            verdict=verdict,
            reasons=reasons,
        ))
    return scored


def score_url(
    url: str, items: Sequence[tuple[ManifestEntry, Path]], *, timeout_s: float = 300.0, progress: bool = True,
    desc: str = "score", client: httpx.Client | None = None, pins: str | None = None,
) -> tuple[list[ScoredFile], dict[str, Any]]:
    """POST each file to a running service; returns the scores and, per deployment, every weights
    version that answered (sorted; more than one while a canary runs).

    `client` replaces the default `httpx.Client(base_url=url)` (custom auth, proxies, tests). `pins`
    is sent as the X-Model-Versions header (e.g. "AVAlignment=v2, Fusion=v2"): a canary compared
    against its primary on the same graph.
    """
    headers = {"X-Model-Versions": pins} if pins else {}
    if client is None:
        try:
            import httpx  # the `dev` extra; only this mode needs an HTTP client
        except ImportError as exc:
            raise RuntimeError("evaluating against --url needs httpx: pip install -e '.[dev]'") from exc
        client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)
    scored: list[ScoredFile] = []
    served: dict[str, set[str]] = {}
    with client:
        for entry, file in tqdm(items, desc=desc, unit="file", disable=not progress):
            response = client.post("/v1/analyze", files={"file": (file.name, file.read_bytes())}, headers=headers)
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                scored.append(ScoredFile.of(entry, fake_probability=None, error=error))
                continue
            body = response.json()
            for deployment, model in body.get("models", {}).items():
                if model.get("version"):
                    served.setdefault(deployment, set()).add(str(model["version"]))
            scores = {
                m: float(report["score"]) for m, report in body["modalities"].items()
                if report["status"] == "ok" and report.get("score") is not None
            }
            decisive = [str(r["code"]) for r in body.get("reasons") or [] if r.get("decisive")]
            if any(r.get("code") == "no_usable_modality" for r in body.get("reasons") or []):
                # No verdict (every model abstained): its 0.5 is not a probability; unanswered, as in process.
                scored.append(ScoredFile.of(
                    entry, fake_probability=None, error="no verdict", verdict="uncertain", reasons=decisive,
                ))
                continue
            scored.append(ScoredFile.of(
                entry, fake_probability=float(body["fake_probability"]), early_exit=bool(body["early_exit"]),
                branch_scores=scores, item_scores={m: [s] for m, s in scores.items()}, verdict=body.get("verdict"),
                reasons=decisive,
            ))
    return scored, {deployment: sorted(versions) for deployment, versions in sorted(served.items())}


# ---- grouping, baselines, plots -------------------------------------------------------------------


def grouped_metrics(files: Sequence[ScoredFile], probs: Sequence[float], threshold: float) -> dict[str, Any]:
    """Overall, per manipulation family (its fakes vs all authentic files) and per compression level."""
    y = np.array([f.label for f in files], int)
    p = np.asarray(probs, float)

    def subset(mask: np.ndarray) -> dict[str, Any]:
        return binary_metrics(y[mask], p[mask], threshold)

    negatives = y == 0
    families = sorted({fam for f in files if f.label == 1 for fam in f.families})
    levels = sorted({f.compression for f in files})
    return {
        "overall": binary_metrics(y, p, threshold),
        "per_family": {fam: subset(negatives | np.array([fam in f.families for f in files])) for fam in families},
        "per_compression": {level: subset(np.array([f.compression == level for f in files])) for level in levels},
    }


def summary_features(files: Sequence[ScoredFile]) -> np.ndarray:
    """(N, 4 * M): per modality mean, max, 90th percentile of its per-frame/per-crop scores, and ran (0/1).

    A branch that did not run contributes (0.5, 0.5, 0.5, 0): "no opinion" plus the fact itself.
    """
    rows = []
    for f in files:
        row = []
        for m in MODALITIES:
            items = np.asarray(f.item_scores.get(m, []), float)
            row += [items.mean(), items.max(), np.percentile(items, 90), 1.0] if items.size else [0.5, 0.5, 0.5, 0.0]
        rows.append(row)
    return np.asarray(rows, float).reshape(len(files), 4 * len(MODALITIES))


def branch_probs(files: Sequence[ScoredFile], modality: str) -> np.ndarray:
    """The branch's score, 0.5 (abstain) where it did not run: a single-branch detector on every file."""
    return np.array([f.branch_scores.get(modality, 0.5) for f in files], float)


def baselines(
    fit: Sequence[ScoredFile], test: Sequence[ScoredFile], threshold: float
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Best single branch (chosen by AUC on the fusion split) and logistic regression on summary stats.

    Both are fitted or chosen on the fusion split, like the fusion model, and scored on `test`.
    """
    report: dict[str, Any] = {}
    probs: dict[str, np.ndarray] = {}
    y_fit = np.array([f.label for f in fit], int)
    if len(set(y_fit.tolist())) < 2:
        reason = "the fusion split needs authentic and fake files"
        return {"best_single_branch": {"skipped": reason}, "logistic_regression": {"skipped": reason}}, probs
    fit_auc = {}
    for m in MODALITIES:
        ran = np.array([m in f.branch_scores for f in fit])
        if ran.any() and len(set(y_fit[ran].tolist())) == 2:
            fit_auc[m] = float(roc_auc_score(y_fit[ran], branch_probs([f for f, r in zip(fit, ran) if r], m)))
    if fit_auc:
        best = max(fit_auc, key=fit_auc.get)
        probs["best_single_branch"] = branch_probs(test, best)
        report["best_single_branch"] = {
            "branch": best, "fusion_split_auc": fit_auc,
            **grouped_metrics(test, probs["best_single_branch"], threshold),
        }
    else:
        report["best_single_branch"] = {"skipped": "no branch ran on both classes of the fusion split"}
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    lr.fit(summary_features(fit), y_fit)
    probs["logistic_regression"] = lr.predict_proba(summary_features(test))[:, 1]
    report["logistic_regression"] = {
        "features": [f"{m}_{s}" for m in MODALITIES for s in ("mean", "max", "p90", "ran")],
        **grouped_metrics(test, probs["logistic_regression"], threshold),
    }
    return report, probs


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """One ROC curve per scorer that saw both classes."""
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (y, p) in curves.items():
        if len(set(np.asarray(y).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate (authentic called fake)", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_reliability(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Reliability diagram: observed fake rate against predicted P(fake), uniform bins."""
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfectly calibrated")
    for name, (y, p) in curves.items():
        if len(y) == 0:
            continue
        prob_true, prob_pred = calibration_curve(y, p, n_bins=N_BINS, strategy="uniform")
        ax.plot(prob_pred, prob_true, marker="o", label=f"{name} (ECE {expected_calibration_error(y, p):.3f})")
    ax.set(xlabel="predicted P(fake)", ylabel="observed fraction fake", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ---- evaluate --------------------------------------------------------------------------------------


def evaluate(
    manifest: Path,
    split: str = "test",
    *,
    version: str | Mapping[str, str] | None = None,
    weights_dir: Path | None = None,
    models: LocalPipeline | None = None,
    url: str | None = None,
    out_dir: Path | None = None,
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    device: str = "cpu",
    workers: int = 1,
    families: Sequence[str] | None = None,
    with_baselines: bool = True,
    timeout_s: float = 300.0,
    progress: bool = True,
    pins: str | None = None,
) -> dict[str, Any]:
    """Metrics of the verdict, each branch alone and two baselines on `split`; JSON + plots in `out_dir`.

    Score with exactly one of: `version` (bundles under `weights_dir`, one version or one per
    bundle name), `models` (already loaded), or `url` (a running service). `families` restricts
    the split to authentic files plus fakes of those families (leave-one-family-out). The
    baselines are fitted on the `fusion` split, scored the same way.
    """
    if sum(x is not None for x in (version, models, url)) != 1:
        raise ValueError("pass exactly one of version, models or url")
    if pins and url is None:
        raise ValueError("pins are request headers: they need url")
    settings = settings or PipelineConfig()
    threshold = settings.verdict.decision_threshold
    if url is None:
        data = load_manifest_data(
            manifest, splits=(split, "fusion") if with_baselines else (split,), cache_dir=cache_dir,
            decode_config=settings.decode, workers=workers, progress=progress,
        )
        models = models or load_pipeline(version, settings, weights_dir=weights_dir, device=device)
        used_models: dict[str, Any] = dict(models.versions)
        files = score_in_process(models, data, data.indices(split, families), progress=progress, desc=split)
        fit = []
        if with_baselines:
            fit = score_in_process(models, data, data.indices("fusion"), progress=progress, desc="fusion")
        undecodable = sum(e.split == split and f in data.failed for e, f in zip(data.entries, data.files, strict=True))
    else:
        entries = list(read_manifest(Path(manifest)))

        def items(of_split: str, only: Sequence[str] | None) -> list[tuple[ManifestEntry, Path]]:
            return [
                (e, Path(manifest).parent / e.path) for e in entries
                if e.split == of_split and (only is None or e.label == 0 or set(e.families) & set(only))
            ]

        files, used_models = score_url(
            url, items(split, families), timeout_s=timeout_s, progress=progress, desc=split, pins=pins,
        )
        fit = []
        if with_baselines:
            fit, _ = score_url(
                url, items("fusion", None), timeout_s=timeout_s, progress=progress, desc="fusion", pins=pins,
            )
        undecodable = 0  # the service answers 4xx for those: they are failed files above

    ok = [f for f in files if f.fake_probability is not None]
    fit = [f for f in fit if f.fake_probability is not None]
    fused = np.array([f.fake_probability for f in ok], float)
    y = np.array([f.label for f in ok], int)
    early = [f for f in ok if f.early_exit]
    report: dict[str, Any] = {
        "manifest": str(manifest), "split": split, "families": list(families) if families else None,
        "mode": "url" if url else "in-process", "url": url, "models": used_models, "threshold": threshold,
        "n_scored": len(ok), "n_failed": len(files) - len(ok) + undecodable,
        "early_exit": {
            "n": len(early), "rate": len(early) / len(ok) if ok else None,
            "wrong": sum((f.fake_probability >= threshold) != bool(f.label) for f in early),
        },
        "fused": grouped_metrics(ok, fused, threshold),
        "branches": {},
    }
    faceless = {e.path for e in read_manifest(Path(manifest)) if e.split == split and e.meta.get("face") is False}
    report["summary"] = operating_summary(files, threshold, faceless=faceless, undecodable=undecodable)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {"fused": (y, fused)}
    for m in MODALITIES:
        ran = [f for f in ok if m in f.branch_scores]
        if not ran:
            continue
        p = branch_probs(ran, m)
        report["branches"][m] = {"coverage": len(ran) / len(ok), **grouped_metrics(ran, p, threshold)}
        curves[m] = (np.array([f.label for f in ran], int), p)
    calibration_curves = dict(curves)  # the reliability diagram shows the verdict and the branches
    if with_baselines:
        report["baselines"], baseline_probs = baselines(fit, ok, threshold)
        curves.update({name: (y, p) for name, p in baseline_probs.items()})
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        with (out_dir / SCORES_FILE).open("w") as f:
            for scored in files:
                f.write(json.dumps(asdict(scored)) + "\n")
        plot_roc(curves, out_dir / "roc.png")
        plot_reliability(calibration_curves, out_dir / "reliability.png")
        outputs = ("metrics.json", SCORES_FILE, "roc.png", "reliability.png")
        report["outputs"] = {name: str(out_dir / name) for name in outputs}
    return report


# ---- in-distribution vs cross-generator -----------------------------------------------------------

SIDE_BY_SIDE_ROWS = (  # (key in `operating_summary`, label printed)
    ("n", "files answered"), ("n_authentic", "  authentic"), ("n_fake", "  fake"),
    ("n_unanswered", "files without an answer (failed, no branch ran)"),
    ("auc", "AUC"), ("eer", "EER"), ("ece", "ECE"),
    ("authentic_called_fake", "authentic answered fake (p >= threshold)"),
    ("fake_called_authentic", "fakes answered authentic (p < threshold)"),
    ("auc_video", "AUC video"), ("auc_image", "AUC image"), ("auc_audio", "AUC audio"),
    ("uncertain_share", "verdict uncertain, all files"), ("uncertain_share_authentic", "verdict uncertain, authentic"),
    ("authentic_verdict_fake", "authentic with verdict fake"), ("ece_answered", "ECE on answered (not uncertain)"),
    ("ece_answered_calibrated", "  a calibrated model's ECE there (median, 90th pct.)"),
    ("uncertain_reasons_authentic", "why authentic files were uncertain (decisive reasons)"),
    ("uncertain_reasons_fake", "why fakes were uncertain (decisive reasons)"),
    ("faceless_authentic_called_fake", "faceless authentic photos answered fake"),
    ("auc_ci95", "AUC, 95 % bootstrap interval"), ("auc_video_ci95", "AUC video, 95 % bootstrap interval"),
)


def operating_summary(
    files: Sequence[ScoredFile], threshold: float, *, faceless: set[str] | frozenset[str] = frozenset(),
    undecodable: int = 0,
) -> dict[str, Any]:
    """One column of the side-by-side table: the verdict's AUC, EER and ECE, the share of authentic
    files answered fake at the operating `threshold` (and of fakes answered authentic), AUC per
    input kind, and where the scores carry a verdict the share of `uncertain` and the ECE of the
    files answered, with the decisive reasons behind each `uncertain` (counted per code, over every
    file answered `uncertain`). AUCs carry a bootstrap interval (`auc_interval`); ECE on answered
    carries what a calibrated model's would be on the same probabilities (`calibrated_ece`).
    `faceless`: paths of authentic photos without a face (None when there are none); one without an
    answer counts as not answered fake. Metrics are over the answered files; `undecodable` files
    (never scored) count as unanswered."""
    everything = list(files)
    files = [f for f in everything if f.fake_probability is not None]
    y = np.array([f.label for f in files], int)
    p = np.array([f.fake_probability for f in files], float)
    overall = binary_metrics(y, p, threshold)
    out: dict[str, Any] = {
        "n": int(y.size), "n_authentic": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
        "n_unanswered": len(everything) - len(files) + undecodable, "threshold": threshold,
        "auc": overall["auc"], "eer": overall["eer"], "ece": overall["ece"],
        "authentic_called_fake": overall["frr"], "fake_called_authentic": overall["far"],
        "auc_ci95": auc_interval(y, p),
    }
    for kind in ("video", "image", "audio"):
        mask = np.array([f.kind == kind for f in files], bool)
        out[f"auc_{kind}"] = binary_metrics(y[mask], p[mask], threshold)["auc"] if mask.any() else None
    video = np.array([f.kind == "video" for f in files], bool)
    out["auc_video_ci95"] = auc_interval(y[video], p[video])
    verdicts = [f.verdict for f in files]
    out.update(uncertain_share=None, uncertain_share_authentic=None, authentic_verdict_fake=None, ece_answered=None,
               ece_answered_calibrated=None, uncertain_reasons_authentic=None, uncertain_reasons_fake=None)
    if files and all(v is not None for v in verdicts):
        uncertain = np.array([v == "uncertain" for v in verdicts], bool)
        authentic = y == 0
        out["uncertain_share"] = float(uncertain.mean())
        out["uncertain_share_authentic"] = float(uncertain[authentic].mean()) if authentic.any() else None
        out["authentic_verdict_fake"] = (
            float(np.mean([v == "fake" for v, a in zip(verdicts, authentic, strict=True) if a])) if authentic.any()
            else None
        )
        out["ece_answered"] = expected_calibration_error(y[~uncertain], p[~uncertain]) if (~uncertain).any() else None
        out["ece_answered_calibrated"] = calibrated_ece(p[~uncertain])
        for name, label in (("authentic", 0), ("fake", 1)):
            counts = Counter(  # every file answered `uncertain`, those with no probability (no verdict) too
                code for f in everything if f.label == label and f.verdict == "uncertain" for code in f.reasons
            )
            out[f"uncertain_reasons_{name}"] = dict(counts.most_common())
    photos = [f for f in everything if f.path in faceless and f.label == 0]
    out["faceless_authentic_called_fake"] = {
        "n": len(photos),
        "fake": sum(
            f.verdict == "fake" if f.verdict is not None
            else f.fake_probability is not None and f.fake_probability >= threshold
            for f in photos
        ),
        "unanswered": sum(f.fake_probability is None for f in photos),
    } if photos else None
    return out


def side_by_side(in_distribution: Mapping[str, Any], cross_generator: Mapping[str, Any]) -> dict[str, Any]:
    """The two reports' summaries as two columns (FaceForensics++ -> Celeb-DF style)."""
    return {"in_distribution": dict(in_distribution["summary"]), "cross_generator": dict(cross_generator["summary"])}


def format_side_by_side(table: Mapping[str, Mapping[str, Any]]) -> str:
    """Summaries (`operating_summary`) as aligned text, one column per key of `table`."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, dict) and "n" in value:
            return f"{value['fake']}/{value['n']}"
        if isinstance(value, dict):  # reason code -> files
            return ", ".join(f"{code} {n}" for code, n in value.items()) or "-"
        if isinstance(value, (list, tuple)):
            return "-".join(f"{v:.3f}" for v in value)
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    columns = tuple(table)
    width = max(len(label) for _, label in SIDE_BY_SIDE_ROWS)
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>16}" for c in columns)]
    for key, label in SIDE_BY_SIDE_ROWS:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{cell(table[c].get(key)):>16}" for c in columns))
    return "\n".join(lines)


def evaluate_cross_generator(
    in_distribution: dict[str, Any], cross_manifest: Path, out_dir: Path | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Score the same weights (or service) on `cross_manifest`'s `test` split, e.g. the independent
    generator's (`training.independent`), and put it beside the in-distribution report.

    Returns `in_distribution` (every key unchanged) plus `cross_generator` (the full report of the
    second manifest) and `side_by_side`; with `out_dir`, the combined report replaces
    `out_dir/metrics.json` and the second manifest's own outputs go to `out_dir/cross_generator/`.
    Nothing is fitted on the second manifest: its verdicts use the same operating threshold, and
    it has no baselines (they would be fitted on its own `fusion` split).
    """
    kwargs.pop("with_baselines", None)
    kwargs.pop("families", None)
    cross = evaluate(
        cross_manifest, "test", out_dir=None if out_dir is None else Path(out_dir) / "cross_generator",
        with_baselines=False, **kwargs,
    )
    combined = {**in_distribution, "cross_generator": cross, "side_by_side": side_by_side(in_distribution, cross)}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(combined, indent=2) + "\n")
    return combined


# ---- leave one family out -----------------------------------------------------------------------


def leave_one_family_out(
    manifest: Path,
    out_dir: Path,
    *,
    families: Sequence[str] | None = None,
    weights_dir: Path | None = None,
    preset: Preset = "default",
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    settings: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """For each family: retrain every model without it (train/val/fusion), test on its unseen fakes.

    Expensive (a full `train_all` per family), hence an explicit command. Bundles go to
    `weights_dir` (default `<out_dir>/weights`) as version `lofo-<family>`, never the served tree.
    """
    out_dir = Path(out_dir)
    weights_dir = weights_dir if weights_dir is not None else out_dir / "weights"
    if families is None:
        test_fakes = [e for e in read_manifest(Path(manifest)) if e.split == "test" and e.label == 1]
        families = sorted({f for e in test_fakes for f in e.families})
    results: dict[str, Any] = {}
    for family in families:
        version = f"lofo-{family}"
        train_all(
            manifest, version, weights_dir=weights_dir, preset=preset, epochs=epochs, seed=seed, device=device,
            exclude_families=[family], settings=settings, cache_dir=cache_dir, workers=workers, overwrite=True,
            progress=progress,
        )
        report = evaluate(
            manifest, "test", version=version, weights_dir=weights_dir, out_dir=out_dir / family, settings=settings,
            cache_dir=cache_dir, device=device, families=[family], with_baselines=False, progress=progress,
        )
        results[family] = {
            "fused": report["fused"]["overall"],
            "branches": {m: b["overall"] for m, b in report["branches"].items()},
            "report": str(out_dir / family / "metrics.json"),
        }
    summary = {"manifest": str(manifest), "preset": preset, "families": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lofo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- test scores into the model cards ------------------------------------------------------------

CARD_SECTION = "## Test-split evaluation"
BRANCHES_OF = {  # which branch scores speak for each bundle
    "fast_triage": ("triage",), "compression_resilient": ("visual",), "av_alignment": ("av", "audio"), "fusion": (),
}


def _scores_line(scores: Mapping[str, Any]) -> str:
    keys = ("n", "auc", "eer", "accuracy", "f1", "ece", "brier", "far", "frr")
    parts = []
    for key in keys:
        value = scores.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def card_section(report: Mapping[str, Any], name: str, command: str) -> str:
    """Markdown: how this bundle's branch and the fused verdict scored on the evaluated split."""
    mode = f"the running service at {report['url']}" if report.get("url") else "the served stages in-process"
    lines = [
        CARD_SECTION, "",
        f"Split `{report['split']}` of `{report['manifest']}`, scored through {mode}; models "
        + ", ".join(f"`{v}`" for v in _bundle_versions(report)) + ".",
        f"Command: `{command}`", "",
        f"- fused verdict (threshold {report['threshold']}): {_scores_line(report['fused']['overall'])}",
    ]
    for branch in BRANCHES_OF.get(name, ()):
        lines.append(f"- `{branch}` branch alone: {_scores_line(report['branches'][branch]['overall'])}")
    tables = [("fused", report["fused"])] + [(b, report["branches"][b]) for b in BRANCHES_OF.get(name, ())]
    for axis in ("per_family", "per_compression"):
        keys = sorted({k for _, t in tables for k in t.get(axis, {})})
        if not keys:
            continue
        what = ("authentic files vs that family's fakes" if axis == "per_family"
                else "authentic and fake files at that compression level")
        lines += ["", f"AUC {axis.replace('_', ' ')} ({what}):", "",
                  "| | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
        for label, table in tables:
            cells = []
            for k in keys:
                auc = table.get(axis, {}).get(k, {}).get("auc")
                cells.append("-" if auc is None else f"{auc:.3f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bundle_versions(report: Mapping[str, Any]) -> list[str]:
    """Every "<bundle>/<version>" the report's models name, in-process ("name/v1 (untrained)") or
    served (deployment -> versions that answered); decoder and keyframe versions are not bundles."""
    found: list[str] = []
    for used in report["models"].values():
        for text in [used] if isinstance(used, str) else list(used):
            bundle = str(text).split()[0]
            if bundle.split("/")[0] in BRANCHES_OF and bundle not in found:
                found.append(bundle)
    return found


def record_in_cards(report: Mapping[str, Any], weights_dir: Path | None, command: str) -> list[Path]:
    """Write (or replace) each evaluated bundle's "Test-split evaluation" card section; checksums follow."""
    root = Path(weights_dir) if weights_dir is not None else weights_root()
    written = []
    for bundle in _bundle_versions(report):
        directory = root / bundle
        if not (directory / "card.md").is_file():
            raise FileNotFoundError(f"{bundle} answered but {directory} has no card.md; pass the served --weights-dir")
        name = bundle.split("/")[0]
        card = (directory / "card.md").read_text()
        head = card.split("\n" + CARD_SECTION, 1)[0].rstrip("\n")
        written.append(update_card(directory, head + "\n\n" + card_section(report, name, command)))
    return written
