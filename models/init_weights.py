"""Write seeded, UNTRAINED bundles of the default presets: `python -m models.init_weights`.

The service needs loadable weights for every deployment before any model is trained, so
that the DAG, rollouts and checksums can be exercised end to end. These bundles are random
initialisations and say so (`trained: false`, and the card); their scores mean nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from models.bundle import BUNDLE_NAMES, save_bundle, weights_root
from models.registry import MODELS

CARD_TEMPLATE = """\
# {name} {version}: UNTRAINED random initialisation

These weights are NOT trained. They are the `{name}` default preset initialised at random
with `torch.manual_seed({seed})`, written by:

    python -m models.init_weights --version {version} --seed {seed}

- Training data: none.
- Evaluation scores: none; outputs carry no information about whether media is fake.
- Purpose: let the service load, verify (sha256, strict keys and shapes) and serve a bundle
  for every deployment before real weights exist. Replace them with trained weights.
- `config.json` carries `"trained": false`, so whatever serves these weights can say so.
"""


def write_untrained(name: str, root: Path, version: str, seed: int) -> Path:
    """Build preset `name` under a fixed seed and save it as an untrained bundle."""
    torch.manual_seed(seed)
    model = MODELS.get(name)()  # each bundle's default preset shares its architecture's name
    card = CARD_TEMPLATE.format(name=name, version=version, seed=seed)
    return save_bundle(
        model,
        root / name / version,
        arch=name,
        config=model.config,
        trained=False,
        card_text=card,
        extra={"seed": seed, "command": f"python -m models.init_weights --version {version} --seed {seed}"},
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="weights root (default: weights_root())")
    parser.add_argument("--version", default="v0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing bundle of that version")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else weights_root()
    for name in BUNDLE_NAMES:
        target = root / name / args.version
        if target.exists() and not args.force:
            parser.error(f"{target} exists; pass --force to overwrite it")
    for name in BUNDLE_NAMES:
        path = write_untrained(name, root, args.version, args.seed)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
