"""Continual updates: the replay buffer keeps every stratum, distillation keeps what the old version knew."""

from __future__ import annotations

import numpy as np
import torch

from models.compression import TEST_CONFIG, CompressionResilientDetector
from training.continual import (
    Features,
    ReplayBuffer,
    UpdateParams,
    auc,
    item_logits,
    update,
)


def _features(n: int, d: int, labels: list[int], strata: list[str], shift: np.ndarray | None = None, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    streams = rng.normal(size=(n, d)).astype(np.float32)
    if shift is not None:
        streams += np.asarray(labels, np.float32)[:, None] * shift[None, :]
    return Features(streams, rng.normal(size=(n, 1)).astype(np.float32), np.arange(n), np.asarray(labels), strata)


def test_features_take_and_join_keep_items_whole() -> None:
    f = Features(np.arange(10, dtype=np.float32).reshape(5, 2), np.zeros((5, 1), np.float32),
                 np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1]), ["a", "b", "c"])
    picked = f.take([2, 0])
    assert picked.item.tolist() == [0, 0, 1, 1] and picked.labels.tolist() == [1, 0] and picked.strata == ["c", "a"]
    assert picked.streams[:, 0].tolist() == [6.0, 8.0, 0.0, 2.0]
    joined = Features.join([f, picked])
    assert joined.n == 5 and joined.item.tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 4]


def test_the_replay_buffer_keeps_a_share_of_every_stratum_within_budget(tmp_path) -> None:
    buffer = ReplayBuffer(budget=30, seed=0)
    common = _features(500, 4, [0] * 500, ["bench/authentic"] * 500)
    buffer.add(common)
    assert len(buffer) == 30
    rare = _features(5, 4, [1] * 5, ["bench/warp"] * 5, seed=1)
    buffer.add(rare)
    kept = {s: len(v) for s, v in buffer.kept.items()}
    assert kept == {"bench/authentic": 15, "bench/warp": 5} and len(buffer) <= 30
    buffer.save(tmp_path / "replay.safetensors")
    again = ReplayBuffer.load(tmp_path / "replay.safetensors")
    assert {s: len(v) for s, v in again.kept.items()} == kept and again.seen == {"bench/authentic": 500, "bench/warp": 5}
    assert np.allclose(np.sort(again.features().streams, axis=0), np.sort(buffer.features().streams, axis=0))


def test_distillation_keeps_the_old_knowledge_that_naive_fine_tuning_loses() -> None:
    torch.manual_seed(0)
    model = CompressionResilientDetector(TEST_CONFIG).eval()
    d = model.fuse[0].in_features
    rng = np.random.default_rng(0)
    old_dir, new_dir = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
    old_labels = [0] * 100 + [1] * 100
    old = _features(200, d, old_labels, ["bench/authentic"] * 100 + ["bench/old"] * 100, 1.5 * old_dir, seed=1)
    model = update(model, old, None, UpdateParams(method="naive", trainable="fuse", epochs=300, lr=1e-2))  # "v1"
    old_test = _features(200, d, old_labels, ["t"] * 200, 1.5 * old_dir, seed=2)
    assert auc(model, old_test) > 0.9

    new = _features(20, d, [1] * 20, ["feedback/new"] * 20, 1.5 * new_dir, seed=3)
    new_test = Features.join([_features(100, d, [1] * 100, ["t"] * 100, 1.5 * new_dir, seed=4),
                              _features(100, d, [0] * 100, ["t"] * 100, seed=5)])
    buffer = ReplayBuffer(60, seed=0)
    buffer.add(old)
    results = {}
    for method in ("naive", "replay", "distill"):
        student = update(model, new, buffer.features(), UpdateParams(method=method, trainable="fuse", epochs=200, lr=1e-2))
        with torch.no_grad():
            authentic_p = torch.sigmoid(item_logits(student, old_test.take(range(100)))).mean().item()
        results[method] = (auc(student, old_test), auc(student, new_test), authentic_p)
    for method in ("replay", "distill"):
        assert results[method][2] < 0.5 and results[method][0] > 0.85, results
        assert results[method][1] > auc(model, new_test), results  # and it learnt the new family
    # the trunk never moves: only classify's layers differ from the old version
    student = update(model, new, buffer.features(), UpdateParams(method="distill", epochs=5))
    changed = {k.split(".")[0] for k, v in student.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {"head"}


def test_update_publishes_a_canary_or_refuses_to_forget(tmp_path) -> None:
    """`spectrashield update` end to end on a tiny generated benchmark and feedback kept by the service's store."""
    import json
    import shutil
    from pathlib import Path

    import yaml

    from deployments.feedback import FeedbackStore
    from models import load_version
    from models.bundle import verify_manifest
    from training.benchmark import main as generate
    from training.continual import REPLAY_FILE, update_main
    from training.manifest import read_manifest

    repo = Path(__file__).resolve().parents[2]
    weights = tmp_path / "weights"
    shutil.copytree(repo / "weights" / "compression_resilient" / "v2", weights / "compression_resilient" / "v2")
    bench = tmp_path / "bench"
    generate([str(bench), "--videos", "0", "--images", "30", "--audio", "0", "--seed", "5", "--no-progress"])
    store = FeedbackStore(tmp_path / "jobs" / "feedback")
    entries = list(read_manifest(bench / "manifest.jsonl"))
    for e in [e for e in entries if e.label == 1][:3] + [e for e in entries if e.label == 0][:1]:
        store.add(label="fake" if e.label else "real", family=e.families[0] if e.label else None,
                  data=(bench / e.path).read_bytes(), request_id="r")
    store.add(label="real", request_id="label-only")  # no media: nothing to learn from, skipped

    common = ["--feedback", str(tmp_path / "jobs" / "feedback"), "--from", "v2", "--weights-dir", str(weights),
              "--replay-manifest", str(bench / "manifest.jsonl"), "--eval-manifest", str(bench / "manifest.jsonl"),
              "--serve-config", str(repo / "cluster" / "serve.cpu.yaml")]
    refused = update_main([*common, "--version", "v9", "--max-forgetting", "-1"])  # any result counts as forgetting
    assert refused == 3 and not (weights / "compression_resilient" / "v9").exists()

    out_config = tmp_path / "canary.yaml"
    assert update_main([*common, "--version", "v3", "--out-config", str(out_config), "--canary-fraction", "0.05"]) == 0
    target = weights / "compression_resilient" / "v3"
    assert {REPLAY_FILE, "ood.safetensors"} <= set(verify_manifest(target))  # checksummed with the weights
    loaded = load_version("compression_resilient", "v3", root=weights)  # strict load
    assert loaded.ood is not None and json.loads((target / "config.json").read_text())["continual"]["from"] == "v2"
    assert "feedback" in (target / "card.md").read_text()
    buffer = ReplayBuffer.load(target / REPLAY_FILE)
    assert any(s.startswith("feedback/") for s in buffer.kept)  # the next update replays the feedback too
    deployment = next(d for d in yaml.safe_load(out_config.read_text())["applications"][0]["deployments"]
                      if d["name"] == "CompressionResilient")
    assert deployment["user_config"]["canary"] == {"version": "v3", "fraction": 0.05}


def test_reptile_and_pretraining_touch_only_classify_and_tasks_are_families() -> None:
    from training.meta import adapt_curve, family_tasks, pretrain, reptile

    torch.manual_seed(0)
    model = CompressionResilientDetector(TEST_CONFIG).eval()
    d = model.fuse[0].in_features
    strata = ["b/authentic"] * 20 + ["b/warp"] * 10 + ["b/blend"] * 10 + ["b/blend+warp"] * 4
    old = _features(44, d, [0] * 20 + [1] * 24, strata, seed=1)
    tasks = family_tasks(old)
    assert sorted(tasks) == ["blend", "warp"]
    assert tasks["warp"].n == 20 + 10 + 4 and int(tasks["warp"].labels.sum()) == 14  # combined fakes count for both
    for init in (pretrain(model, old, steps=10, seed=0), reptile(model, old, steps=10, seed=0)):
        changed = {k.split(".")[0] for k, v in init.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
        assert changed == {"fuse", "head"}
    rows = adapt_curve(model, old, np.arange(20, 30), np.arange(0, 10), old, old, [0, 5], seed=0, steps=5)
    assert [r["k"] for r in rows] == [0, 5] and rows[0]["new_auc"] == auc(model, old)


def test_the_forgery_policy_learns_and_pgd_flips_fakes() -> None:
    """The adversarial loop on tiny stand-ins: every action forges a valid crop, the policy's choice shifts
    towards what the detector misses, only classify learns, and PGD with a larger budget flips more fakes."""
    from training.adversarial import (
        HEADS,
        LoopParams,
        forge,
        pgd_success,
        robustness_loop,
    )

    rng = np.random.default_rng(0)
    crop = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    for name, options in HEADS.items():
        for i in range(len(options)):
            action = {n: 0 for n in HEADS} | {name: i}
            forged = forge(crop, action, np.random.default_rng(1))
            assert forged.shape == crop.shape and forged.dtype == np.uint8
    torch.manual_seed(0)
    model = CompressionResilientDetector(TEST_CONFIG).eval()
    authentic = (rng.random((24, 32, 32, 3)) * 255).astype(np.uint8)
    fakes = (rng.random((24, 32, 32, 3)) * 255).astype(np.uint8)
    detector, policy, history = robustness_loop(model, authentic, fakes, LoopParams(rounds=3, batch=8, seed=0))
    assert len(history) == 3 and all(np.isfinite(h["policy_reward"]) for h in history)
    changed = {k.split(".")[0] for k, v in detector.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed == {"fuse", "head"}
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in policy.parameters())
    from pipeline.tensors import images_to_tensor

    with torch.no_grad():  # centre the untrained model's logits so that about half the fakes are "caught"
        model.head.bias -= model(images_to_tensor(fakes)).logit.median()
    rates = [pgd_success(model, fakes, eps / 255) for eps in (0.5, 8, 64)]
    assert rates == sorted(rates) and rates[0] < 0.5 and rates[-1] == 1.0, rates
