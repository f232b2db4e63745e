"""Each replica is its own process and loads only the libraries its stage uses.

torch alone costs a replica ~400 MB of resident memory, transformers ~120 MB more, and PyAV +
dlib + scikit-learn ~70 MB; the CPU profile's budget is 6 GiB in all. A replica that runs no
model must not load torch; a model replica loads transformers only if it builds a Wav2Vec2
encoder (AVAlignment), and no model replica loads the decoding or clustering libraries.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "av", "dlib", "sklearn")

# deployment module -> (code that builds the replica as Serve would, libraries it may load)
CASES = {
    "deployments.ingress": ("", set()),
    "deployments.jobs": ("", set()),
    "deployments.decoder": ("d = m.MediaDecoderDeployment.func_or_class(); d.reconfigure({})", {"av", "dlib"}),
    "deployments.keyframes": ("d = m.KeyframeSelectorDeployment.func_or_class(); d.reconfigure({})", {"sklearn"}),
    "deployments.triage": ("d = m.FastTriageDeployment.func_or_class(); d.reconfigure({'version': 'v1'})", {"torch"}),
    "deployments.compression": (
        "d = m.CompressionResilientDeployment.func_or_class(); d.reconfigure({'version': 'v1'})", {"torch"},
    ),
    "deployments.fusion": ("d = m.FusionDeployment.func_or_class(); d.reconfigure({'version': 'v1'})", {"torch"}),
    "deployments.av_alignment": (
        "d = m.AVAlignmentDeployment.func_or_class(); d.reconfigure({'version': 'v1'})", {"torch", "transformers"},
    ),
}


@pytest.mark.parametrize("module", sorted(CASES))
def test_replica_loads_only_what_its_stage_uses(module: str) -> None:
    build, allowed = CASES[module]
    probe = (
        f"import importlib, sys; m = importlib.import_module({module!r}); {build}\n"
        f"print(sorted(n for n in {HEAVY!r} if n in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # a printed list of names
    assert loaded <= allowed, f"{module} loads {sorted(loaded - allowed)} as well"
