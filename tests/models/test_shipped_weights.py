"""The bundles committed under weights/: v0 (untrained, seeded), v1 (trained on the generated
benchmark) and v2 (real faces, real speech and TTS, pretrained backbone: what the Serve configs serve). They load strictly, say truthfully whether
they are trained, fit each other, and produce golden outputs (so a silent change to a model's
code or its weights fails here).

GOLDEN holds outputs on seeded inputs. When a bundle is deliberately replaced, copy the
`actual` values from this test's failure message into GOLDEN in the same change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import yaml

from models import BUNDLE_NAMES, MODELS, list_versions, load_bundle, modality_dims
from models.fusion import av_features, visual_features
from pipeline.fuse import run_fusion
from pipeline.results import BranchResult

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "weights"
# three generations of four bundles, the visual v2 and v3 (2.9 MB each) with an ImageNet backbone; AV v3 and v4
# repeat v1's weights (git stores those bytes once)
MAX_TOTAL_BYTES = 17 * 1024 * 1024
# What both Serve configs name: v2 of the face models (real faces, pretrained backbone), v4 of the AV
# model (v1's weights with statistics of the voices it learned (v3) and of the recordings they came in
# (v4), so it abstains on others; v2's spoof head is better on real TTS but false-alarms on real
# speakers, see its card), and the fusion fitted on these branches (AV v3, the same weights), reading
# their scores only (v4); the fusion is v7, a logistic regression over those scores (monotone in each), served
# since v6's attention path was found to fall as a branch's doubt rises (README "A fusion that moves one way").
SERVED = {"fast_triage": "v2", "compression_resilient": "v3", "av_alignment": "v4", "fusion": "v7"}
VERSIONS = ("v0", "v1", "v2")  # every bundle has these
BRANCHES_OF_FUSION = {
    "v0": ("v0", "v0"), "v1": ("v1", "v1"), "v2": ("v2", "v2"), "v3": ("v2", "v1"), "v4": ("v2", "v3"), "v5": ("v2", "v4"), "v6": ("v3", "v4"), "v7": ("v3", "v4"),
}
DEPLOYMENT_OF = {
    "fast_triage": "FastTriage", "compression_resilient": "CompressionResilient",
    "av_alignment": "AVAlignment", "fusion": "Fusion",
}

GOLDEN_V0: dict[str, dict[str, list[float]]] = {
    "fast_triage": {"clip_logit": [0.004485], "frame_logits": [-0.017563, -0.021978, -0.025489]},
    "compression_resilient": {
        "logit": [0.323246, 0.324206],
        "recon_error": [0.008567, 0.008415],
        "embedding": [-0.008803, -0.014025, -0.014451],
    },
    "av_alignment": {
        "sync_logit": [0.1188],
        "offset_s": [0.000188],
        "spoof_logit": [0.196267],
        "embedding": [0.860449, 2.985947, -0.352231],
    },
    "fusion": {"logit": [-0.52372, 0.25914], "gate_weights": [0.244401, 0.274569, 0.261109, 0.219921]},
}

GOLDEN_V1: dict[str, dict[str, list[float]]] = {
    "fast_triage": {"clip_logit": [1.483973], "frame_logits": [1.026693, 1.005062, 1.091833]},
    "compression_resilient": {
        "logit": [-2.754386, -3.309346],
        "recon_error": [0.009558, 0.009283],
        "embedding": [-0.128027, -0.102566, 0.483872],
    },
    "av_alignment": {
        "sync_logit": [-0.340566],
        "offset_s": [0.180633],
        "spoof_logit": [4.516451],
        "embedding": [-0.60097, 2.11903, 0.55309],
    },
    "fusion": {"logit": [3.184096, 3.075615], "gate_weights": [0.044216, 0.70606, 0.177061, 0.072663]},
}

GOLDEN_V2: dict[str, dict[str, list[float]]] = {
    "fast_triage": {"clip_logit": [1.237824], "frame_logits": [0.867747, 0.670822, 0.635079]},
    "compression_resilient": {
        "logit": [0.756766, 0.163183],
        "recon_error": [0.01038, 0.010381],
        "embedding": [0.14864, 0.201164, -0.024313],
    },
    "av_alignment": {  # v1's sync and offset weights; the spoof head is new
        "sync_logit": [-0.340569],
        "offset_s": [0.180633],
        "spoof_logit": [6.502276],
        "embedding": [-0.600971, 2.11903, 0.55309],
    },
    "fusion": {"logit": [3.234764, 1.703055], "gate_weights": [0.195184, 0.190452, 0.614364]},
}

GOLDEN_V3: dict[str, dict[str, list[float]]] = {
    "fusion": {"logit": [2.573332, 2.745553], "gate_weights": [0.126404, 0.116042, 0.408047, 0.349508]},
}

GOLDEN_V3["av_alignment"] = GOLDEN_V1["av_alignment"]  # v3 is v1's weights, byte for byte, plus OOD statistics

GOLDEN_V4: dict[str, dict[str, list[float]]] = {
    "fusion": {"logit": [1.011964, 3.931298], "gate_weights": [0.064327, 0.690289, 0.245384]},
}

GOLDEN_V4["av_alignment"] = GOLDEN_V1["av_alignment"]  # v4 is v3 plus the recording-channel statistics

# v5 is v4 (v1's weights, both of its statistics) plus the speech expert (real speech, real TTS) and its statistics
GOLDEN_V5: dict[str, dict[str, list[float]]] = {
    "av_alignment": {**GOLDEN_V1["av_alignment"], "expert_spoof_logit": [5.963834]},
    "fusion": {"logit": [3.719867, 3.996208], "gate_weights": [0.036794, 0.042868, 0.920337]},
}

# compression_resilient v3: v2's recipe with H.264/HEVC/VP9 round trips among the quality damage; fusion v6 fits it
GOLDEN_V3["compression_resilient"] = {
    "logit": [-1.425261, -0.958665],
    "recon_error": [0.010375, 0.010376],
    "embedding": [-0.161446, -0.169385, 0.323548],
}

GOLDEN_V6: dict[str, dict[str, list[float]]] = {
    "fusion": {"logit": [2.245322, 4.153606], "gate_weights": [0.044032, 0.047877, 0.90809]},
}

# fusion v7: v6's inputs, a logistic regression over them (`--fusion-linear`)
GOLDEN_V7: dict[str, dict[str, list[float]]] = {
    "fusion": {"logit": [3.89746, 0.560732], "gate_weights": [0.404552, 0.463089, 0.132359]},
}

GOLDEN = {
    "v0": GOLDEN_V0, "v1": GOLDEN_V1, "v2": GOLDEN_V2, "v3": GOLDEN_V3, "v4": GOLDEN_V4, "v5": GOLDEN_V5, "v6": GOLDEN_V6,
    "v7": GOLDEN_V7,
}


def golden_outputs(name: str, model: torch.nn.Module) -> dict[str, list[float]]:
    """A few output values per bundle, on inputs drawn from a fixed generator."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        if name == "fast_triage":
            out = model(torch.rand(1, 6, 3, 128, 128, generator=g))
            values = {"clip_logit": out.clip_logit, "frame_logits": out.frame_logits[0, :3]}
        elif name == "compression_resilient":
            out = model(torch.rand(2, 3, 128, 128, generator=g))
            values = {"logit": out.logit, "recon_error": out.recon_error, "embedding": out.embedding[0, :3]}
        elif name == "av_alignment":
            t = 10
            audio = torch.randn(1, 16000, generator=g) * 0.1
            out = model(
                audio,
                torch.randn(1, t, 20, 2, generator=g) * 0.3,
                torch.rand(1, t, 48, 96, generator=g),
                torch.arange(t, dtype=torch.float32).view(1, t) / 10,
            )
            values = {
                "sync_logit": out.sync_logit,
                "offset_s": out.offset_ms / 1000,
                "spoof_logit": out.spoof_logit,
                "embedding": out.embedding[0, :3],
            }
            expert = model.expert_spoof(audio)
            if expert is not None:  # v5 on: the speech expert, which the forward pass does not run
                values["expert_spoof_logit"] = expert.spoof_logit
        elif name == "fusion":
            features = {k: torch.randn(2, d, generator=g) for k, d in model.config.modalities}
            m = len(model.config.modalities)
            present = torch.tensor([[True] * m, [i % 2 == 1 for i in range(m)]])
            out = model(features, present)
            values = {"logit": out.logit, "gate_weights": out.gate_weights[0]}
        else:
            raise KeyError(name)
    return {k: [round(float(x), 6) for x in v.reshape(-1)] for k, v in values.items()}


@pytest.fixture(
    scope="module", params=[(n, v) for n in BUNDLE_NAMES for v in list_versions(n, root=WEIGHTS)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def shipped(request):
    name, version = request.param
    return name, version, load_bundle(WEIGHTS / name / version)


def test_every_bundle_has_both_versions() -> None:
    for name in BUNDLE_NAMES:
        assert set(VERSIONS) <= set(list_versions(name, root=WEIGHTS)), name


def test_loads_strictly_and_says_whether_it_is_trained(shipped) -> None:
    name, version, bundle = shipped
    assert bundle.arch == name and bundle.version == version
    if version in ("v0", "v1") and not (name == "fusion" and version == "v3"):
        assert bundle.config == MODELS.get(name)().config  # both are the default preset
    card = (bundle.path / "card.md").read_text()
    if version == "v0":
        assert bundle.trained is False
        assert "UNTRAINED" in card
    elif version == "v1":
        assert bundle.trained is True
        for section in ("Training data:", "spectrashield train", "Wall time", "## Validation scores",
                        "## Test-split evaluation", "fused verdict"):
            assert section in card, (name, section)
    else:  # v2 cards name their real sources with licences, the command, the wall time and the scores
        assert bundle.trained is True
        lowered = card.lower()
        for word in ("command", "wall time", "licen", "score"):
            assert word in lowered, (name, word)


def test_golden_outputs(shipped) -> None:
    name, version, bundle = shipped
    actual = golden_outputs(name, bundle.model)
    expected = GOLDEN[version].get(name, {})
    assert actual.keys() == expected.keys(), f"{name} {version}: actual = {actual!r}"
    for key in expected:
        torch.testing.assert_close(
            torch.tensor(actual[key]),
            torch.tensor(expected[key]),
            atol=1e-4,
            rtol=1e-4,
            msg=f"{name} {version}.{key}: actual = {actual!r}",
        )


@pytest.mark.parametrize("version", sorted(BRANCHES_OF_FUSION))
def test_fusion_bundle_fits_branch_bundles(version: str) -> None:
    assert set(list_versions("fusion", root=WEIGHTS)) == set(BRANCHES_OF_FUSION)
    visual, av_version = BRANCHES_OF_FUSION[version]
    compression = load_bundle(WEIGHTS / "compression_resilient" / visual).config
    av = load_bundle(WEIGHTS / "av_alignment" / av_version).config
    fusion = load_bundle(WEIGHTS / "fusion" / version).config
    unread = set(fusion.independent) | set(fusion.ignored)
    assert fusion.modalities == tuple(d for d in modality_dims(compression, av) if d[0] not in unread)
    own_speech_head = av.spoof_net is not None or av.speech_expert is not None
    assert fusion.independent == (("audio",) if own_speech_head else ())
    # v5 on: the second-largest crop logit beside the mean (one frame alone is not evidence)
    assert fusion.visual_peak == ("max" if version in ("v0", "v1", "v2", "v3", "v4") else "second")


@pytest.mark.parametrize("profile", ["serve.cpu.yaml", "serve.gpu.yaml"])
def test_serve_configs_serve_the_trained_version(profile: str) -> None:
    app = yaml.safe_load((REPO / "cluster" / profile).read_text())["applications"][0]
    versions = {d["name"]: d["user_config"]["version"] for d in app["deployments"] if "version" in d.get("user_config", {})}
    assert versions == {DEPLOYMENT_OF[n]: SERVED[n] for n in BUNDLE_NAMES}


def test_weights_stay_small() -> None:
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total < MAX_TOTAL_BYTES, f"weights/ is {total} bytes"


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _fused(model, visual: float | None, av: float | None) -> float:
    """The fuse stage's P(fake) for one clip whose visual crops all score `visual` and whose AV branch scores
    `av` (1 - sync probability, audio as recorded), None where that branch did not run."""
    dims = dict(model.config.modalities)
    branches = []
    if visual is not None:
        k, e = 4, dims["visual"] - 3
        features = visual_features(np.full(k, _logit(visual)), np.zeros((k, e)), np.full(k, 0.003))
        branches.append(BranchResult("visual", "ok", score=visual, features=features))
    if av is not None:
        features = av_features(_logit(1.0 - av), 0.0, -3.0, np.zeros(dims["av"] - 3))
        branches.append(BranchResult("av", "ok", score=av, features=features))
    (result,) = run_fusion(model, [branches])
    return result.probability


def test_the_served_fusion_never_falls_as_a_branch_doubts_more() -> None:
    """More doubt from one branch, the other held, never lowers the served P(fake). Fusion v6's attention path
    did: at AV 0.33 a clip with visual 0.2 was 0.99 and one with visual 0.8 was 0.55, so a face the visual
    branch doubted more made a fake look less fake."""
    model = load_bundle(WEIGHTS / "fusion" / SERVED["fusion"]).model.eval()
    grid = (0.02, 0.05, 0.1, 0.2, 0.33, 0.5, 0.7, 0.9, 0.98)
    for held in (None, *grid):
        along_av = [_fused(model, held, a) for a in grid]
        assert all(b >= a - 1e-6 for a, b in zip(along_av, along_av[1:])), (held, along_av)
        along_visual = [_fused(model, v, held) for v in grid]
        assert all(b >= a - 1e-6 for a, b in zip(along_visual, along_visual[1:])), (held, along_visual)
