"""Evaluation: metric functions on hand-checkable cases, in-process evaluation and plots, URL mode,
leave-one-family-out wiring.

Models here are the untrained `test` presets saved as bundles: evaluation must be right whatever
the scores are, and training has its own tests.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models import BUNDLE_NAMES, MODELS, load_bundle, save_bundle
from training import evaluate as evaluate_module
from training.cli import main as cli_main
from training.evaluate import (
    METRIC_KEYS,
    auc_interval,
    binary_metrics,
    calibrated_ece,
    compare_runs,
    equal_error_rate,
    evaluate,
    expected_calibration_error,
    leave_one_family_out,
    paired_auc_difference,
    score_url,
)
from training.manifest import read_manifest
from tests.training.test_train import write_tiny_manifest

REPO = Path(__file__).resolve().parents[2]
PROBABILITY_KEYS = ("auc", "eer", "accuracy", "f1", "brier", "ece", "far", "frr")
BUNDLES = ("fast_triage", "compression_resilient", "av_alignment", "fusion")


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_manifest(tmp_path_factory.getbasetemp() / "tiny_benchmark")


def save_untrained(weights: Path, version: str, seed: int = 0) -> None:
    """Seeded `test`-preset bundles (their dims fit each other, as `fusion_test` is built for them)."""
    torch.manual_seed(seed)
    for name in BUNDLES:
        model = MODELS.get(f"{name}_test")()
        save_bundle(model, weights / name / version, arch=name, config=model.config, trained=False, card_text="test")


@pytest.fixture(scope="session")
def untrained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = tmp_path_factory.mktemp("eval_weights")
    save_untrained(weights, "u0")
    return weights


# ---- metrics on cases checked by hand -------------------------------------------------------------


def test_perfect_separation() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert set(m) == set(METRIC_KEYS)
    assert (m["auc"], m["eer"], m["accuracy"], m["f1"], m["far"], m["frr"]) == (1.0, 0.0, 1.0, 1.0, 0.0, 0.0)
    assert m["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert m["ece"] == pytest.approx((0.1 + 0.2 + 0.2 + 0.1) / 4)  # one file per bin: mean |y - p|
    assert (m["n"], m["n_pos"], m["n_neg"]) == (4, 2, 2)


def test_overlapping_scores() -> None:
    """Fakes 0.4, 0.9 vs authentic 0.1, 0.6: 3 of 4 pairs ordered; at 0.5 one of each class is wrong."""
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert m["auc"] == pytest.approx(0.75)
    assert m["eer"] == pytest.approx(0.5)
    assert (m["accuracy"], m["f1"], m["far"], m["frr"]) == (0.5, 0.5, 0.5, 0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)


def test_far_and_frr_follow_the_threshold() -> None:
    y, p = [0, 0, 0, 1, 1], [0.2, 0.5, 0.7, 0.6, 0.8]
    assert (binary_metrics(y, p, 0.5)["far"], binary_metrics(y, p, 0.5)["frr"]) == (0.0, pytest.approx(2 / 3))
    assert (binary_metrics(y, p, 0.75)["far"], binary_metrics(y, p, 0.75)["frr"]) == (0.5, 0.0)


def test_eer_threshold_sits_between_the_classes() -> None:
    eer, threshold = equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert eer == 0.0 and 0.2 < threshold <= 0.8


def test_undefined_metrics_are_none() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert m["auc"] is None and m["eer"] is None and m["far"] is None
    assert m["frr"] == pytest.approx(1 / 3)
    empty = binary_metrics([], [])
    assert set(empty) == set(METRIC_KEYS) and empty["n"] == 0 and empty["accuracy"] is None


def test_ece() -> None:
    assert expected_calibration_error([0, 1, 0, 1], [0.9] * 4) == pytest.approx(0.4)  # says 90 %, is 50 %
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20_000)
    assert expected_calibration_error(rng.uniform(size=p.size) < p, p) < 0.02  # calibrated by construction
    assert expected_calibration_error(rng.uniform(size=p.size) < p, p**3) > 0.1


def test_the_auc_interval_resamples_each_class_and_narrows_with_more_files() -> None:
    """Fakes score Beta(4, 2), authentic files Beta(2, 4) (population AUC 0.897): the interval on 20 + 20
    files holds that AUC and is wide; on 400 + 400 it holds it and is far narrower. Tied scores count half,
    as in `roc_auc_score`, and a class with fewer than two files gives no interval."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    intervals = {}
    for n in (20, 400):
        y = np.r_[np.zeros(n, int), np.ones(n, int)]
        p = np.r_[rng.beta(2, 4, n), rng.beta(4, 2, n)]
        low, high = auc_interval(y, p)
        assert low <= 0.897 <= high and low <= roc_auc_score(y, p) <= high
        intervals[n] = high - low
    assert intervals[20] > 0.15 and intervals[400] < 0.08
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    assert evaluate_module._rank_auc(tied[:2], tied[2:]) == pytest.approx(0.5)  # every pair tied
    assert auc_interval([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0)  # every resample separates
    assert auc_interval([0, 1, 1], [0.1, 0.8, 0.9]) is None and auc_interval([], []) is None


def test_a_calibrated_models_ece_is_the_floor_a_measured_one_is_read_against() -> None:
    """Labels drawn from the probabilities: the measured ECE falls inside the reference, which shrinks as
    files are added; a model that says 90 % where half are fake sits far above its reference."""
    rng = np.random.default_rng(4)
    p = rng.uniform(size=35)
    median, p90 = calibrated_ece(p)
    assert 0.05 < median < p90  # on 35 files even a calibrated model misses an ECE target of 0.05
    larger, _ = calibrated_ece(rng.uniform(size=2000))
    assert larger < median / 3
    wrong = np.full(40, 0.9)
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    assert expected_calibration_error(labels, wrong) > 3 * calibrated_ece(wrong)[1]
    assert calibrated_ece([]) is None


def test_a_paired_difference_cancels_what_both_scorers_share() -> None:
    """Two scorers that share most of their signal and differ a little: the paired interval of AUC(A) -
    AUC(B) is far narrower than either AUC's own interval, holds the measured difference, and flips sign
    with A and B. A scorer against itself differs by exactly 0 in every resample; a clearly better one is
    ahead in (nearly) every resample."""
    rng = np.random.default_rng(5)
    n = 60
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    shared = y * 1.0 + rng.normal(0, 1.0, 2 * n)
    a, b = shared + rng.normal(0, 0.15, 2 * n), shared + rng.normal(0, 0.15, 2 * n)
    d = paired_auc_difference(y, a, b)
    low, high = d["ci95"]
    assert low <= d["difference"] <= high and (d["n_authentic"], d["n_fake"]) == (n, n)
    own_low, own_high = auc_interval(y, a)
    assert high - low < (own_high - own_low) / 3  # pairing: the shared noise cancels
    flipped = paired_auc_difference(y, b, a)
    assert flipped["difference"] == pytest.approx(-d["difference"])
    assert flipped["ci95"][0] == pytest.approx(-high, abs=0.01) and flipped["ci95"][1] == pytest.approx(-low, abs=0.01)
    same = paired_auc_difference(y, a, a)
    assert same["difference"] == 0.0 and same["ci95"] == (0.0, 0.0) and same["share_a_ahead"] == 0.0
    better = paired_auc_difference(y, y + rng.normal(0, 0.3, 2 * n), rng.normal(0, 1, 2 * n))
    assert better["ci95"][0] > 0.2 and better["share_a_ahead"] > 0.99
    assert paired_auc_difference([0, 1, 1], [0.1, 0.8, 0.9], [0.2, 0.7, 0.9]) is None
    with pytest.raises(ValueError, match="one value per file"):
        paired_auc_difference([0, 1], [0.1, 0.9], [0.5])


def test_compare_pairs_two_evaluations_by_path(tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`spectrashield compare A B`: files paired by path (one only A scored is left out, one B could not
    answer is counted), the AUC difference over all files and videos, and the verdict moves per class."""
    entry = next(e for e in read_manifest(tiny_manifest) if e.split == "test")
    of = evaluate_module.ScoredFile.of

    def file(name: str, label: int, p: float | None, verdict: str, kind: str = "video") -> evaluate_module.ScoredFile:
        return of(entry.model_copy(update={"path": name, "label": label, "kind": kind}), fake_probability=p, verdict=verdict)

    a = [file("v1", 0, 0.1, "real"), file("v2", 0, 0.6, "uncertain"), file("v3", 0, 0.2, "real"),
         file("v4", 1, 0.9, "fake"), file("v5", 1, 0.4, "uncertain"), file("v6", 1, 0.8, "fake"),
         file("i1", 0, 0.3, "real", "image"), file("i2", 1, 0.7, "fake", "image"), file("only_a", 1, 0.9, "fake")]
    b = [file("v1", 0, 0.2, "real"), file("v2", 0, 0.3, "real"), file("v3", 0, None, "uncertain"),
         file("v4", 1, 0.95, "fake"), file("v5", 1, 0.1, "real"), file("v6", 1, 0.7, "uncertain"),
         file("i1", 0, 0.3, "real", "image"), file("i2", 1, 0.6, "uncertain", "image")]
    for name, files in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.jsonl").write_text("".join(json.dumps(asdict(f)) + "\n" for f in files))
    comparison = compare_runs(tmp_path / "a", tmp_path / "b")
    assert (comparison["files_a"], comparison["files_b"], comparison["paired"]) == (9, 8, 8)
    assert comparison["unanswered_by_either"] == 1  # v3: B gave no probability
    video = comparison["auc_difference_video"]
    assert (video["n_authentic"], video["n_fake"]) == (2, 3)
    assert video["difference"] == pytest.approx(5 / 6 - 4 / 6)  # A orders 5 of 6 pairs (v5 under v2), B 4 (v5 last)
    assert comparison["auc_difference_all"]["n_authentic"] == 3
    assert comparison["verdicts_authentic"] == {"real -> real": 2, "real -> uncertain": 1, "uncertain -> real": 1}
    assert comparison["verdicts_fake"] == {"fake -> fake": 1, "fake -> uncertain": 2, "uncertain -> real": 1}
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "AUC A - B, video: +0.167" in capsys.readouterr().out
    (tmp_path / "c").mkdir()  # the same paths, other files: refused
    other = [file("v1", 1, 0.2, "real")]
    (tmp_path / "c" / "scores.jsonl").write_text("".join(json.dumps(asdict(f)) + "\n" for f in other))
    with pytest.raises(ValueError, match="same manifest"):
        compare_runs(tmp_path / "a", tmp_path / "c")


# ---- evaluation ----------------------------------------------------------------------------------


def test_evaluate_in_process_reports_every_metric(tiny_manifest: Path, untrained_weights: Path, tmp_path: Path) -> None:
    report = evaluate(
        tiny_manifest, "test", version="u0", weights_dir=untrained_weights, out_dir=tmp_path, progress=False
    )
    assert report["mode"] == "in-process" and report["n_scored"] == 7 and report["n_failed"] == 0
    assert set(report["models"]) == set(BUNDLES)

    def check(metrics: dict) -> None:
        assert set(metrics) == set(METRIC_KEYS)
        for key in PROBABILITY_KEYS:
            assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0, (key, metrics[key])

    fused = report["fused"]
    check(fused["overall"])
    assert fused["overall"]["auc"] is not None and fused["overall"]["n"] == 7
    assert set(fused["per_family"]) == {"av_shift", "face_blend", "upsample", "vocoder"}
    assert all(m["n_pos"] == 1 and m["n_neg"] == 3 for m in fused["per_family"].values())
    assert set(fused["per_compression"]) == {"none", "crf30"}
    assert set(report["branches"]) == {"triage", "visual", "av", "audio"}
    assert report["branches"]["triage"]["overall"]["n"] == 3  # videos only
    assert report["branches"]["visual"]["overall"]["n"] == 5  # videos and images
    assert report["branches"]["audio"]["overall"]["n"] == 5  # videos and audio files
    for branch in report["branches"].values():
        check(branch["overall"])
    baselines = report["baselines"]
    assert baselines["best_single_branch"]["branch"] in report["branches"]
    check(baselines["best_single_branch"]["overall"])
    check(baselines["logistic_regression"]["overall"])
    assert len(baselines["logistic_regression"]["features"]) == 16

    assert json.loads((tmp_path / "metrics.json").read_text())["fused"] == json.loads(json.dumps(fused))
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 7
    for plot in ("roc.png", "reliability.png"):
        data = (tmp_path / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


_ANSWERED: list[int] = []


def _answer(request: httpx.Request) -> httpx.Response:
    """A service that calls every file 0.8 fake, with a triage and visual score and audio skipped;
    its Fusion canary answers every second request, and AVAlignment only the first."""
    assert request.url.path == "/v1/analyze" and b'name="file"' in request.content
    _ANSWERED.append(1)
    models = {"Fusion": {"version": "fusion/v1" if len(_ANSWERED) % 2 else "fusion/v2"}}
    if len(_ANSWERED) == 1:
        models["AVAlignment"] = {"version": "av_alignment/v1"}
    return httpx.Response(200, json={
        "fake_probability": 0.8, "early_exit": False,
        "modalities": {
            "triage": {"status": "ok", "score": 0.7}, "visual": {"status": "ok", "score": 0.9},
            "av": {"status": "skipped", "score": None}, "audio": {"status": "failed", "score": None},
        },
        "models": models,
    })


def test_url_mode_reads_the_service_answer(tiny_manifest: Path) -> None:
    entries = [e for e in read_manifest(tiny_manifest) if e.split == "test"][:2]
    _ANSWERED.clear()
    client = httpx.Client(transport=httpx.MockTransport(_answer), base_url="http://service")
    scored, models = score_url(
        "http://service", [(e, tiny_manifest.parent / e.path) for e in entries], client=client, progress=False
    )
    assert models == {"AVAlignment": ["av_alignment/v1"], "Fusion": ["fusion/v1", "fusion/v2"]}  # every version seen
    assert evaluate_module._bundle_versions({"models": models}) == ["av_alignment/v1", "fusion/v1", "fusion/v2"]
    assert [s.fake_probability for s in scored] == [0.8, 0.8]
    assert scored[0].branch_scores == {"triage": 0.7, "visual": 0.9} and scored[0].path == entries[0].path


def test_url_mode_pins_versions_with_the_service_header(tiny_manifest: Path) -> None:
    entries = [e for e in read_manifest(tiny_manifest) if e.split == "test"][:2]
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Model-Versions"))
        return _answer(request)

    items = [(e, tiny_manifest.parent / e.path) for e in entries]
    client = httpx.Client(transport=httpx.MockTransport(answer), base_url="http://service")
    score_url("http://service", items, client=client, progress=False, pins="AVAlignment=v2, Fusion=v2")
    client = httpx.Client(transport=httpx.MockTransport(answer), base_url="http://service")
    score_url("http://service", items, client=client, progress=False)
    assert seen == ["AVAlignment=v2, Fusion=v2"] * 2 + [None] * 2
    with pytest.raises(ValueError, match="need url"):
        evaluate_module.evaluate(tiny_manifest, version="v1", pins="Fusion=v2")


def test_versions_per_bundle_parse() -> None:
    from training.features import parse_versions

    assert parse_versions("v1") == "v1" and parse_versions(None) is None
    assert parse_versions("fast_triage=v1, fusion=v2") == {"fast_triage": "v1", "fusion": "v2"}
    with pytest.raises(ValueError):
        parse_versions("fusion=")


def test_leave_one_family_out_trains_without_the_family_and_tests_on_it(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_train_all(manifest: Path, version: str, *, weights_dir: Path, exclude_families: list[str], **_) -> None:
        calls.append((version, list(exclude_families)))
        save_untrained(weights_dir, version)

    monkeypatch.setattr(evaluate_module, "train_all", fake_train_all)
    summary = leave_one_family_out(tiny_manifest, tmp_path, families=["upsample"], progress=False)
    assert calls == [("lofo-upsample", ["upsample"])]
    fused = summary["families"]["upsample"]["fused"]
    assert (fused["n_pos"], fused["n_neg"]) == (1, 3)  # the family's test fakes against every authentic file
    assert json.loads((tmp_path / "lofo.json").read_text())["families"]["upsample"]["fused"] == fused
    assert (tmp_path / "upsample" / "roc.png").is_file()


def test_cli_eval_writes_its_outputs(
    tiny_manifest: Path, untrained_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--manifest", str(tiny_manifest), "--version", "u0", "--weights-dir", str(untrained_weights),
            "--out", str(out), "--family", "vocoder", "--no-baselines", "--device", "cpu", "--no-progress"]
    assert cli_main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["families"] == ["vocoder"] and report["n_scored"] == 4 and "baselines" not in report
    summary = report["summary"]
    assert set(summary) >= {"auc_ci95", "auc_video_ci95", "ece_answered_calibrated"}
    assert summary["auc_ci95"] is None or summary["auc_ci95"][0] <= summary["auc_ci95"][1]
    assert "AUC video, 95 % bootstrap interval" in capsys.readouterr().out  # the summary is printed


def test_cli_eval_records_the_scores_in_the_cards(tiny_manifest: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    save_untrained(weights, "c0")
    argv = ["eval", "--manifest", str(tiny_manifest), "--version", "c0", "--weights-dir", str(weights),
            "--out", str(tmp_path / "eval"), "--no-baselines", "--device", "cpu", "--no-progress", "--record-in-cards"]
    for _ in range(2):  # a second run replaces the section instead of appending another
        assert cli_main(argv) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for name in BUNDLE_NAMES:
        card = (weights / name / "c0" / "card.md").read_text()
        assert card.startswith("test") and card.count("## Test-split evaluation") == 1, card
        assert "--record-in-cards" in card and f"fused verdict (threshold {report['threshold']})" in card
        auc = report["fused"]["overall"]["auc"]
        assert (f"auc {auc:.3f}" in card) if auc is not None else True
        load_bundle(weights / name / "c0")  # the manifest follows the new card: still loads
    assert "`av` branch alone" in (weights / "av_alignment" / "c0" / "card.md").read_text()


def test_cli_fit_ood_attaches_statistics_the_visual_stage_then_reads(tiny_manifest: Path, tmp_path: Path) -> None:
    from models.bundle import OOD_FILE
    from training.features import load_manifest_data, load_pipeline

    weights = tmp_path / "weights"
    save_untrained(weights, "u0")
    assert cli_main([
        "fit-ood", "--manifest", str(tiny_manifest), "--version", "u0", "--weights-dir", str(weights),
        "--quantile", "0.9", "--no-progress",
    ]) == 0
    assert (weights / "compression_resilient" / "u0" / OOD_FILE).is_file()
    pipeline = load_pipeline("u0", weights_dir=weights)
    stats = pipeline.bundles["compression_resilient"].ood
    assert stats is not None and stats.threshold > 0
    data = load_manifest_data(tiny_manifest, splits=("test",), progress=False)
    measured = [pipeline.visual(data.arrays(i), None) for i in data.indices("test") if data.entries[i].kind != "audio"]
    assert all(b.out_of_distribution is not None and "ood_distance" in b.details for b in measured if b.status == "ok")


def test_cli_fit_ood_audio_fits_one_region_per_class_that_the_av_stage_then_reads(
    tiny_manifest: Path, tmp_path: Path,
) -> None:
    from models.bundle import OOD_FILE
    from training.features import load_manifest_data, load_pipeline

    weights = tmp_path / "weights"
    save_untrained(weights, "u0")
    assert cli_main([
        "fit-ood", "--branch", "audio", "--manifest", str(tiny_manifest), "--version", "u0",
        "--weights-dir", str(weights), "--quantile", "0.9", "--no-progress",
    ]) == 0
    assert (weights / "av_alignment" / "u0" / OOD_FILE).is_file()
    assert not (weights / "compression_resilient" / "u0" / OOD_FILE).exists()
    pipeline = load_pipeline("u0", weights_dir=weights)
    stats = pipeline.bundles["av_alignment"].ood
    assert stats is not None and stats.components == 2 and stats.threshold > 0
    data = load_manifest_data(tiny_manifest, splits=("test",), progress=False)
    heard = [pipeline.av(data.arrays(i)).audio for i in data.indices("test") if data.entries[i].kind != "image"]
    judged = [b for b in heard if b.status == "ok" or b.code == "out_of_distribution"]
    assert judged and all("ood_distance" in b.details and b.out_of_distribution is not None for b in judged)


def test_cli_fit_ood_channel_attaches_recording_statistics_the_av_stage_then_reads(
    tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from models.bundle import CHANNEL_OOD_FILE, OOD_FILE
    from training.features import load_manifest_data, load_pipeline

    weights = tmp_path / "weights"
    save_untrained(weights, "u0")
    capsys.readouterr()
    assert cli_main([
        "fit-ood", "--branch", "channel", "--manifest", str(tiny_manifest), "--version", "u0",
        "--weights-dir", str(weights), "--quantile", "0.9", "--hold-out-source", "elsewhere", "--no-progress",
    ]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["held_out_sources"] == ["elsewhere"] and report["train_files"] >= 2
    bundle = weights / "av_alignment" / "u0"
    assert (bundle / CHANNEL_OOD_FILE).is_file() and not (bundle / OOD_FILE).exists()
    pipeline = load_pipeline("u0", weights_dir=weights)
    stats = pipeline.bundles["av_alignment"].channel_ood
    assert stats is not None and stats.components == 2 and pipeline.bundles["av_alignment"].ood is None
    data = load_manifest_data(tiny_manifest, splits=("test",), progress=False)
    heard = [pipeline.av(data.arrays(i)).audio for i in data.indices("test") if data.entries[i].kind != "image"]
    judged = [b for b in heard if b.status == "ok" or b.code == "out_of_distribution"]
    assert judged and all("channel_distance" in b.details and "ood_distance" not in b.details for b in judged)
    assert all((b.details["channel_distance"] > b.details["channel_threshold"]) == b.out_of_distribution for b in judged)


def test_cli_fit_ood_expert_fits_the_speech_experts_two_tests_and_refuses_a_bundle_without_one(
    tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from models.bundle import EXPERT_CHANNEL_OOD_FILE, EXPERT_OOD_FILE, load_bundle
    from models.spoof import SpectralSpoofConfig, SpectralSpoofNet
    from training.spoof import attach_spoof_net

    weights = tmp_path / "weights"
    save_untrained(weights, "u0")
    expert = SpectralSpoofNet(SpectralSpoofConfig(channels=(4, 8), embed_dim=8)).eval()
    attach_spoof_net(weights / "av_alignment" / "u0", expert, weights / "av_alignment" / "u1", "u1", {}, as_expert=True)
    common = ["--manifest", str(tiny_manifest), "--weights-dir", str(weights), "--quantile", "0.9", "--no-progress"]
    for branch in ("expert", "expert_channel"):
        capsys.readouterr()
        assert cli_main(["fit-ood", "--branch", branch, "--version", "u1", *common]) == 0
        assert json.loads(capsys.readouterr().out)["train_files"] >= 2
    loaded = load_bundle(weights / "av_alignment" / "u1")
    assert loaded.expert_ood is not None and loaded.expert_ood.mean.shape == (2, 8)  # one region per class
    assert loaded.expert_channel_ood is not None and loaded.ood is None and loaded.channel_ood is None
    assert (loaded.path / EXPERT_OOD_FILE).is_file() and (loaded.path / EXPERT_CHANNEL_OOD_FILE).is_file()
    with pytest.raises(ValueError, match="no speech expert"):
        cli_main(["fit-ood", "--branch", "expert", "--version", "u0", *common])


def test_url_mode_counts_a_no_verdict_answer_as_unanswered_not_fake(tiny_manifest: Path) -> None:
    """The service answers a faceless photo 200 `uncertain` with p 0.5 and `no_usable_modality`: that 0.5
    is no probability, so it is unanswered (as in process), and a faceless photo never counts as fake."""
    entry = next(e for e in read_manifest(tiny_manifest) if e.split == "test")

    def no_verdict(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "fake_probability": 0.5, "early_exit": False, "verdict": "uncertain",
            "reasons": [{"code": "no_face", "decisive": False}, {"code": "no_usable_modality", "decisive": True}],
            "modalities": {"visual": {"status": "skipped", "score": None}}, "models": {},
        })

    client = httpx.Client(transport=httpx.MockTransport(no_verdict), base_url="http://service")
    (scored,), _ = score_url("http://service", [(entry, tiny_manifest.parent / entry.path)], client=client,
                             progress=False)
    assert scored.fake_probability is None and scored.verdict == "uncertain"
    assert scored.reasons == ["no_usable_modality"]  # the decisive reasons only
    photo = evaluate_module.ScoredFile.of(entry.model_copy(update={"label": 0}), fake_probability=0.5, verdict="uncertain")
    summary = evaluate_module.operating_summary([photo], 0.5, faceless={entry.path})
    assert summary["faceless_authentic_called_fake"]["fake"] == 0


def test_the_summary_counts_why_files_were_uncertain(tiny_manifest: Path) -> None:
    """Each decisive reason code of an `uncertain` answer counts once per file, authentic and fakes apart;
    answers that are not `uncertain` count nothing, and a file with no verdict (every model abstained) does."""
    entry = next(e for e in read_manifest(tiny_manifest) if e.split == "test")
    authentic, fake = entry.model_copy(update={"label": 0}), entry.model_copy(update={"label": 1})
    of = evaluate_module.ScoredFile.of
    files = [
        of(authentic, fake_probability=0.9, verdict="uncertain", reasons=["weak_evidence"]),
        of(authentic, fake_probability=0.55, verdict="uncertain", reasons=["near_threshold", "out_of_distribution"]),
        of(authentic, fake_probability=0.45, verdict="uncertain", reasons=["near_threshold"]),
        of(authentic, fake_probability=None, verdict="uncertain", reasons=["no_usable_modality"]),
        of(authentic, fake_probability=0.1, verdict="real"),
        of(fake, fake_probability=0.99, verdict="uncertain", reasons=["low_quality"]),
        of(fake, fake_probability=0.99, verdict="fake"),
    ]
    summary = evaluate_module.operating_summary(files, 0.5)
    assert summary["uncertain_reasons_authentic"] == {
        "near_threshold": 2, "weak_evidence": 1, "out_of_distribution": 1, "no_usable_modality": 1,
    }
    assert summary["uncertain_reasons_fake"] == {"low_quality": 1}
    assert summary["uncertain_share_authentic"] == pytest.approx(3 / 4)  # over the answered files
    table = evaluate_module.format_side_by_side({"test": summary})
    assert "near_threshold 2, weak_evidence 1" in table
