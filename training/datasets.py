"""Adapters that read public deepfake datasets in their own on-disk layouts into manifest entries.

A user who has FaceForensics++, DFDC, FakeAVCeleb or ASVspoof 2019 LA on disk points an adapter
at the dataset's root and gets the same `ManifestEntry` list the synthetic benchmark produces,
so training and evaluation run on it unchanged:

    python -m training.datasets ffpp /data/FaceForensics++ manifests/ffpp.jsonl

Every adapter has the signature of `DatasetAdapter`. Rules they share:

- Only metadata is read (directory listings, csv/json/txt files); media files are never opened,
  only checked for existence, so building a manifest for 100k videos takes seconds.
- Paths in the entries are relative to `relative_to` (default: `root`), and a manifest's paths
  are read relative to the manifest's own directory: write the manifest in `relative_to`.
  `main` does this for you by passing the output file's directory.
- Every entry has a `group` (a source video or identity). All entries of a group land in one
  split, so no identity or source clip is shared between train and test.
- The dataset's official split is kept where it has one; the splits it lacks (always `fusion`,
  and `val`/`test` for some datasets) are carved out of its official train part by group, in
  the proportions `splits` gives them. Without an official split, groups are split by a seeded
  shuffle, weighted by how many files each group holds.
- A root that does not look like the dataset raises `DatasetLayoutError` naming what is missing
  and the layout expected; files a metadata file lists but the disk lacks are left out with a
  logged warning (a partial download still works).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, cast, get_args

from training.manifest import Kind, ManifestEntry, ModalityLabels, Split, write_manifest

log = logging.getLogger(__name__)

SplitFractions = Sequence[tuple[Split, float]]
DEFAULT_SPLITS: tuple[tuple[Split, float], ...] = (("train", 0.7), ("val", 0.1), ("fusion", 0.1), ("test", 0.1))


class DatasetLayoutError(ValueError):
    """The root (or a metadata file in it) does not match the dataset's published layout."""


class DatasetAdapter(Protocol):
    def __call__(
        self,
        root: Path,
        *,
        split_seed: int = 0,
        splits: SplitFractions = DEFAULT_SPLITS,
        relative_to: Path | None = None,
    ) -> list[ManifestEntry]: ...


@dataclass
class _Item:
    """One file found for the manifest, before it has a split."""

    path: Path
    label: int
    kind: Kind
    group: str
    families: list[str] = field(default_factory=list)
    compression: str = "none"
    modality: ModalityLabels = field(default_factory=ModalityLabels)
    meta: dict[str, Any] = field(default_factory=dict)
    official: Split | None = None


def _layout_error(dataset: str, problem: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{dataset}: {problem}\nexpected layout under the root:\n{layout}")


def _require_dir(dataset: str, root: Path, layout: str) -> None:
    if not root.is_dir():
        raise _layout_error(dataset, f"root {root} is not a directory", layout)


# ---------------------------------------------------------------------------------------------
# Splits


def check_splits(splits: Sequence[tuple[str, float]]) -> list[tuple[Split, float]]:
    """Validate split names and fractions; fractions are relative weights and need not sum to 1."""
    known = get_args(Split)
    checked: list[tuple[Split, float]] = []
    for name, fraction in splits:
        if name not in known:
            raise ValueError(f"unknown split {name!r}; known: {', '.join(known)}")
        if any(name == seen for seen, _ in checked):
            raise ValueError(f"split {name!r} is given twice")
        if not math.isfinite(fraction) or fraction < 0:
            raise ValueError(f"split {name!r} has fraction {fraction}; it must be finite and >= 0")
        checked.append((cast(Split, name), float(fraction)))
    if sum(fraction for _, fraction in checked) <= 0:
        raise ValueError("split fractions must not all be zero")
    return checked


def split_groups(sizes: Mapping[str, int], splits: SplitFractions, seed: int) -> dict[str, Split]:
    """Assign whole groups to splits so each split holds about its fraction of the files.

    Groups are shuffled by `seed` (from a sorted order, so the result does not depend on the
    order files were listed in) and laid end to end; a group goes to the split its midpoint
    falls in. Weighting by size keeps a split's share right when groups differ in size.
    """
    fractions = check_splits(splits)
    total_fraction = sum(fraction for _, fraction in fractions)
    bounds: list[tuple[Split, float]] = []
    running = 0.0
    for name, fraction in fractions:
        running += fraction / total_fraction
        bounds.append((name, running))
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    total = sum(sizes.values())
    assigned: dict[str, Split] = {}
    cumulative = 0
    for group in order:
        midpoint = (cumulative + sizes[group] / 2) / total
        assigned[group] = next((name for name, bound in bounds if midpoint < bound), bounds[-1][0])
        cumulative += sizes[group]
    return assigned


def _assign_splits(dataset: str, items: Sequence[_Item], splits: SplitFractions, seed: int) -> dict[str, Split]:
    """Official splits where the dataset has them; the rest seeded by group (see module docstring)."""
    fractions = check_splits(splits)
    sizes = Counter(item.group for item in items)
    official: dict[str, Split | None] = {}
    example: dict[str, Path] = {}
    for item in items:
        previous = official.get(item.group)
        if item.official is not None and previous is not None and previous != item.official:
            raise DatasetLayoutError(
                f"{dataset}: group {item.group!r} has files in two official splits, {previous} "
                f"({example[item.group]}) and {item.official} ({item.path}); they would leak between splits"
            )
        if previous is None:
            official[item.group] = item.official
            if item.official is not None:
                example[item.group] = item.path
    assigned: dict[str, Split] = {group: split for group, split in official.items() if split is not None}
    given = set(assigned.values())
    free = {group: sizes[group] for group, split in official.items() if split is None}
    if free:
        assigned.update(split_groups(free, fractions, seed))
    carve = [(name, fraction) for name, fraction in fractions if name == "train" or name not in given]
    official_train = {group: sizes[group] for group, split in official.items() if split == "train"}
    if official_train and sum(fraction for _, fraction in carve) > 0:
        assigned.update(split_groups(official_train, carve, seed))
    return assigned


def _keep_existing(dataset: str, items: list[_Item], listed_in: str) -> list[_Item]:
    """Drop listed files the disk lacks, so a partial download still gives a usable manifest."""
    present: list[_Item] = []
    missing: list[_Item] = []
    for item in items:
        (present if item.path.is_file() else missing).append(item)
    if missing:
        log.warning(
            "%s: %d of %d files listed in %s are missing and left out (e.g. %s)",
            dataset, len(missing), len(items), listed_in, missing[0].path,
        )
    return present


def _entries(
    dataset: str,
    root: Path,
    items: list[_Item],
    layout: str,
    splits: SplitFractions,
    seed: int,
    relative_to: Path | None,
) -> list[ManifestEntry]:
    if not items:
        raise _layout_error(dataset, f"no media files found under {root}", layout)
    assigned = _assign_splits(dataset, items, splits, seed)
    base = root if relative_to is None else relative_to
    return [
        ManifestEntry(
            path=Path(os.path.relpath(item.path, base)).as_posix(),
            label=item.label,
            kind=item.kind,
            families=item.families,
            compression=item.compression,
            split=assigned[item.group],
            source=dataset,
            modality_labels=item.modality,
            group=item.group,
            meta=item.meta,
        )
        for item in items
    ]


def _visual_only(label: int) -> ModalityLabels:
    return ModalityLabels(visual=label)


# ---------------------------------------------------------------------------------------------
# FaceForensics++

FFPP_LAYOUT = """\
  original_sequences/youtube/{raw,c23,c40}/videos/<id>.mp4                  e.g. 000.mp4
  original_sequences/actors/{raw,c23,c40}/videos/<actor>__<scene>.mp4       (DeepFakeDetection, optional)
  manipulated_sequences/<Method>/{raw,c23,c40}/videos/<target>_<source>.mp4 e.g. Deepfakes/c23/videos/000_003.mp4
  manipulated_sequences/DeepFakeDetection/{raw,c23,c40}/videos/<target>_<source>__<scene>__<experiment>.mp4
  splits/{train,val,test}.json   (optional: the official [["<id>", "<id>"], ...] pair lists)"""


class _UnionFind:
    """Joins youtube ids that appear in one manipulated file, so a swap pair forms one group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        parent = self._parent.setdefault(node, node)
        if parent != node:
            parent = self._parent[node] = self.find(parent)
        return parent

    def union(self, a: str, b: str) -> None:
        self._parent[self.find(a)] = self.find(b)

    def components(self) -> dict[str, str]:
        """node -> readable component name: its members sorted and joined by '+'."""
        members: dict[str, list[str]] = {}
        for node in self._parent:
            members.setdefault(self.find(node), []).append(node)
        return {node: "+".join(sorted(members[self.find(node)])) for node in self._parent}


def _ffpp_official_splits(root: Path) -> dict[str, Split]:
    """youtube id -> official split, from splits/*.json when the user put them there."""
    split_dir = root / "splits"
    if not split_dir.is_dir():
        return {}
    official: dict[str, Split] = {}
    split_names: tuple[Split, ...] = ("train", "val", "test")
    for split in split_names:
        path = split_dir / f"{split}.json"
        if not path.is_file():
            raise _layout_error("ffpp", f"{split_dir} exists but {path} is missing", FFPP_LAYOUT)
        try:
            pairs = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetLayoutError(f"ffpp: {path} is not valid JSON: {exc}") from exc
        if not isinstance(pairs, list) or not all(isinstance(pair, list) for pair in pairs):
            raise DatasetLayoutError(f'ffpp: {path} must be a list of id pairs like [["000", "003"], ...]')
        for pair in pairs:
            for video_id in map(str, pair):
                if official.setdefault(video_id, split) != split:
                    raise DatasetLayoutError(
                        f"ffpp: id {video_id} is in both splits/{official[video_id]}.json and splits/{split}.json"
                    )
    return official


# FF++'s compression folders (some mirrors say c0 for raw); masks/ and other folders beside them are skipped.
_FFPP_COMPRESSIONS = ("raw", "c0", "c23", "c40")


def _ffpp_videos(parent: Path) -> Iterator[tuple[str, str, Path]]:
    """(subset dir name, compression, video) for every <subset>/<compression>/videos/*.mp4."""
    if not parent.is_dir():
        return
    for subset in sorted(p for p in parent.iterdir() if p.is_dir()):
        for level in (subset / name for name in _FFPP_COMPRESSIONS if (subset / name / "videos").is_dir()):
            for video in sorted((level / "videos").glob("*.mp4")):
                yield subset.name, level.name, video


def ffpp_manifest(
    root: Path,
    *,
    split_seed: int = 0,
    splits: SplitFractions = DEFAULT_SPLITS,
    relative_to: Path | None = None,
) -> list[ManifestEntry]:
    """FaceForensics++ (and DeepFakeDetection where present): every video of every method and compression.

    Grouping: youtube ids joined by a manipulated `<target>_<source>` file are one group (union-find),
    so both originals of a swap and every fake made from either share a split; in FF++ these
    components are exactly the official pairs, so the official split files apply unchanged.
    DeepFakeDetection files are grouped by their target actor (the person whose recording was
    manipulated): joining source actors too would chain most actors into one group, so a
    source actor's face may appear in another split than their own recordings.
    Splits: youtube groups follow splits/{train,val,test}.json when present (fusion is carved from
    train); DeepFakeDetection, and everything when the files are absent, is split by seed.
    """
    root = Path(root)
    _require_dir("ffpp", root, FFPP_LAYOUT)
    originals, manipulated = root / "original_sequences", root / "manipulated_sequences"
    if not originals.is_dir() and not manipulated.is_dir():
        raise _layout_error("ffpp", f"neither {originals} nor {manipulated} exists", FFPP_LAYOUT)
    official = _ffpp_official_splits(root)
    components = _UnionFind()
    found: list[tuple[_Item, list[str]]] = []

    for subset, level, video in _ffpp_videos(originals):
        stem = video.stem
        item = _Item(video, 0, "video", "", compression=level, modality=_visual_only(0), meta={"subset": subset})
        if "__" in stem:
            actor = stem.split("__")[0]
            item.group = f"ffpp:actor:{actor}"
            item.meta["actor"] = actor
            found.append((item, []))
        else:
            components.find(stem)
            item.meta["id"] = stem
            found.append((item, [stem]))

    for method, level, video in _ffpp_videos(manipulated):
        stem = video.stem
        pair = stem.split("__")[0]
        ids = pair.split("_")
        if len(ids) != 2 or not all(ids):
            log.warning("ffpp: %s is not named <target>_<source>; left out", video)
            continue
        target, source = ids
        item = _Item(
            video, 1, "video", "", families=[method.lower()], compression=level,
            modality=_visual_only(1), meta={"method": method, "target": target, "source": source},
        )
        if "__" in stem:
            item.group = f"ffpp:actor:{target}"
            found.append((item, []))
        else:
            components.union(target, source)
            found.append((item, ids))

    names = components.components()
    for item, ids in found:
        if not ids:
            continue
        item.group = f"ffpp:{names[ids[0]]}"
        splits_of = {official[video_id] for video_id in ids if video_id in official}
        if len(splits_of) > 1:
            raise DatasetLayoutError(
                f"ffpp: {item.path} joins ids {' and '.join(ids)}, which the official splits put in "
                f"{' and '.join(sorted(splits_of))}"
            )
        item.official = next(iter(splits_of), None)
    unlisted = sorted({item.group for item, ids in found if ids and item.official is None})
    if official and unlisted:
        log.warning(
            "ffpp: %d groups are in no official split file and are split by seed (e.g. %s)", len(unlisted), unlisted[0]
        )
    items = [item for item, _ in found]
    return _entries("ffpp", root, items, FFPP_LAYOUT, splits, split_seed, relative_to)


# ---------------------------------------------------------------------------------------------
# DFDC

DFDC_LAYOUT = """\
  dfdc_train_part_<n>/metadata.json   {"<file>.mp4": {"label": "FAKE"|"REAL", "split": "train",
                                                      "original": "<file>.mp4"|null}}
  dfdc_train_part_<n>/<file>.mp4
  <test folder>/labels.csv            columns filename,label (label 0/1), videos beside it
  <test folder>/metadata.json         {"<file>.mp4": {"is_fake": 0|1, ...}}, videos beside it
  (metadata.json/labels.csv may also sit directly in the root, e.g. Kaggle's train_sample_videos/)"""

_SPLIT_ALIASES: dict[str, Split] = {
    "train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "eval": "test",
}
_BINARY_LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "false": 0, "true": 1}


def _binary_label(value: object, where: str) -> int:
    text = str(value).strip().lower()
    if text.endswith(".0"):
        text = text[:-2]
    if text not in _BINARY_LABELS:
        raise DatasetLayoutError(f"dfdc: {where}: label {value!r} is not 0/1, REAL/FAKE or true/false")
    return _BINARY_LABELS[text]


def _dfdc_item(
    folder: Path, root: Path, name: str, label: int, original: str | None, official: Split, extra: dict[str, Any]
) -> _Item:
    """Fakes are grouped with their original so a source clip and its fakes share a split."""
    anchor = original if label == 1 and original else name
    return _Item(
        path=folder / name,
        label=label,
        kind="video",
        group=f"dfdc:{PurePosixPath(anchor).stem}",
        families=["dfdc"] if label else [],
        modality=ModalityLabels() if label else ModalityLabels(visual=0, audio=0, av=0),
        meta={"folder": folder.relative_to(root).as_posix(), "original": original if label else None, **extra},
        official=official,
    )


def _dfdc_metadata_json(path: Path, root: Path) -> Iterator[_Item]:
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetLayoutError(f"dfdc: {path} is not valid JSON: {exc}") from exc
    if not isinstance(records, dict):
        raise _layout_error("dfdc", f"{path} is not an object keyed by file name", DFDC_LAYOUT)
    for name, info in records.items():
        where = f"{path} [{name!r}]"
        if not isinstance(info, dict):
            raise _layout_error("dfdc", f"{where} is not an object", DFDC_LAYOUT)
        extra = {k: v for k, v in info.items() if k not in ("label", "is_fake", "original", "split")}
        if "label" in info:
            split_name = str(info.get("split") or "train").lower()
            if split_name not in _SPLIT_ALIASES:
                raise DatasetLayoutError(f"dfdc: {where}: unknown split {info.get('split')!r}")
            label = _binary_label(info["label"], where)
            yield _dfdc_item(path.parent, root, name, label, info.get("original"), _SPLIT_ALIASES[split_name], extra)
        elif "is_fake" in info:
            label = _binary_label(info["is_fake"], where)
            yield _dfdc_item(path.parent, root, name, label, info.get("original"), "test", extra)
        else:
            problem = f"{where} has neither 'label' (train schema) nor 'is_fake' (test schema)"
            raise _layout_error("dfdc", problem, DFDC_LAYOUT)


def _dfdc_labels_csv(path: Path, root: Path) -> Iterator[_Item]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "filename" not in columns or "label" not in columns:
            raise _layout_error("dfdc", f"{path} has columns {reader.fieldnames}, not filename,label", DFDC_LAYOUT)
        for line_no, row in enumerate(reader, 2):
            name = (row[columns["filename"]] or "").strip()
            if name:
                label = _binary_label(row[columns["label"]], f"{path}:{line_no}")
                yield _dfdc_item(path.parent, root, name, label, None, "test", {})


def dfdc_manifest(
    root: Path,
    *,
    split_seed: int = 0,
    splits: SplitFractions = DEFAULT_SPLITS,
    relative_to: Path | None = None,
) -> list[ManifestEntry]:
    """DFDC: every train part and labelled test folder found in the root or one level below it.

    Grouping: a fake is grouped with its `original`, a real video by its own name. DFDC's
    metadata names no actor, so two source clips of one actor may land in different splits.
    Splits: train-schema files are the official train part; labels.csv and is_fake folders are
    test. val and fusion (and test, when no test folder is present) are carved from train.
    The metadata does not say which modality a fake manipulates, so fakes carry unknown
    (None) modality labels and the family "dfdc".
    """
    root = Path(root)
    _require_dir("dfdc", root, DFDC_LAYOUT)
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    sources = [p for folder in folders for p in (folder / "metadata.json", folder / "labels.csv") if p.is_file()]
    if not sources:
        raise _layout_error("dfdc", f"no metadata.json or labels.csv in {root} or its subfolders", DFDC_LAYOUT)
    by_path: dict[Path, _Item] = {}
    for source in sources:
        parse = _dfdc_labels_csv if source.name == "labels.csv" else _dfdc_metadata_json
        for item in parse(source, root):
            seen = by_path.setdefault(item.path, item)
            if seen.label != item.label:
                raise DatasetLayoutError(
                    f"dfdc: {item.path} is labelled both {seen.label} and {item.label} in {source.parent}"
                )
    listed_in = f"{len(sources)} metadata file(s)"
    items = _keep_existing("dfdc", list(by_path.values()), listed_in)
    return _entries("dfdc", root, items, DFDC_LAYOUT, splits, split_seed, relative_to)


# ---------------------------------------------------------------------------------------------
# FakeAVCeleb

FAKEAVCELEB_LAYOUT = """\
  meta_data.csv   header source,target1,target2,method,category,type,race,gender,path
                  (v1.2 rows carry one field more than the header: <file>.mp4, then its directory)
  RealVideo-RealAudio/<race>/<gender>/<source id>/<file>.mp4   category A
  RealVideo-FakeAudio/<race>/<gender>/<source id>/<file>.mp4   category B
  FakeVideo-RealAudio/<race>/<gender>/<source id>/<file>.mp4   category C
  FakeVideo-FakeAudio/<race>/<gender>/<source id>/<file>.mp4   category D
  (the four folders may also sit one level down, e.g. FakeAVCeleb/, as the csv's directories spell them)"""

# type folder -> (category, video fake, audio fake)
_FAKEAVCELEB_TYPES: dict[str, tuple[str, int, int]] = {
    "RealVideo-RealAudio": ("A", 0, 0),
    "RealVideo-FakeAudio": ("B", 0, 1),
    "FakeVideo-RealAudio": ("C", 1, 0),
    "FakeVideo-FakeAudio": ("D", 1, 1),
}
_FAKEAVCELEB_FIELDS = ("source", "target1", "target2", "method", "category", "type", "race", "gender")
_MEDIA_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _fakeavceleb_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of meta_data.csv as dicts, tolerant of the releases' header/row mismatch.

    Named fields are read by header name; when rows carry an extra leading index the names are
    shifted by one (found by where the `type` value sits). The file name and its directory are
    read by value (the field ending in .mp4, the field holding a '/'), because v1.2 names the
    file name column `path` and leaves the directory column unnamed.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in ("source", "type") if name not in header]
        if missing:
            problem = f"{path} header {header} lacks {', '.join(missing)}"
            raise _layout_error("fakeavceleb", problem, FAKEAVCELEB_LAYOUT)
        type_at = header.index("type")
        for line_no, raw in enumerate(reader, 2):
            values = [value.strip() for value in raw]
            while values and not values[-1]:
                values.pop()
            if not values:
                continue
            at_type = {s: values[type_at + s] for s in (0, 1, -1) if 0 <= type_at + s < len(values)}
            shift = next((s for s, value in at_type.items() if value in _FAKEAVCELEB_TYPES), None)
            if shift is None:
                raise DatasetLayoutError(
                    f"fakeavceleb: {path}:{line_no}: no field is one of {', '.join(_FAKEAVCELEB_TYPES)}: {raw}"
                )
            row = {
                name: values[i + shift]
                for i, name in enumerate(header)
                if name in _FAKEAVCELEB_FIELDS and 0 <= i + shift < len(values)
            }
            files = [v for v in values if v.lower().endswith(_MEDIA_SUFFIXES)]
            folders = [v for v in values if "/" in v and not v.lower().endswith(_MEDIA_SUFFIXES)]
            if not files or not row.get("source"):
                raise DatasetLayoutError(f"fakeavceleb: {path}:{line_no}: no video file name or source id in {raw}")
            row["filename"] = files[-1]
            row["directory"] = folders[-1] if folders else ""
            yield line_no, row


def _fakeavceleb_base(root: Path) -> Path:
    """The folder holding the four category folders: the root or one level below it."""
    for candidate in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if any((candidate / name).is_dir() for name in _FAKEAVCELEB_TYPES):
            return candidate
    problem = f"none of {', '.join(_FAKEAVCELEB_TYPES)} is in {root} or a folder directly below it"
    raise _layout_error("fakeavceleb", problem, FAKEAVCELEB_LAYOUT)


def fakeavceleb_manifest(
    root: Path,
    *,
    split_seed: int = 0,
    splits: SplitFractions = DEFAULT_SPLITS,
    relative_to: Path | None = None,
) -> list[ManifestEntry]:
    """FakeAVCeleb: every row of meta_data.csv whose video is on disk.

    Labels: category A is authentic; B/C/D are fake. modality_labels.visual/audio say whether the
    video/audio track is fake; av is 1 for B/C/D because the audio-visual pair is no authentic
    recording (FakeAVCeleb's own real/fake pair label). Families are the method column's parts
    ('fsgan-wav2lip' -> fsgan, wav2lip); which track is fake comes from the category/type, not
    the method. Category, type, method, targets, race and gender are kept in meta.
    Grouping: by the source identity (the id folder); a fake's target identities are in meta and
    may appear in another split. There is no official split, so all splits are seeded by group.
    """
    root = Path(root)
    _require_dir("fakeavceleb", root, FAKEAVCELEB_LAYOUT)
    csv_path = root / "meta_data.csv"
    if not csv_path.is_file():
        raise _layout_error("fakeavceleb", f"{csv_path} is missing", FAKEAVCELEB_LAYOUT)
    base = _fakeavceleb_base(root)
    by_path: dict[Path, _Item] = {}
    for line_no, row in _fakeavceleb_rows(csv_path):
        type_name = row["type"]
        category, video_fake, audio_fake = _FAKEAVCELEB_TYPES[type_name]
        if row.get("category") and row["category"].upper() != category:
            raise DatasetLayoutError(
                f"fakeavceleb: {csv_path}:{line_no}: category {row['category']!r} contradicts "
                f"type {type_name} ({category})"
            )
        folder_parts = PurePosixPath(row["directory"]).parts
        if type_name in folder_parts:
            folder = PurePosixPath(*folder_parts[folder_parts.index(type_name):])
        else:
            folder = PurePosixPath(type_name, row.get("race", ""), row.get("gender", ""), row["source"])
        label = int(video_fake or audio_fake)
        method = row.get("method", "").lower()
        path = base / folder / row["filename"]
        by_path.setdefault(path, _Item(
            path=path,
            label=label,
            kind="video",
            group=f"fakeavceleb:{row['source']}",
            families=[part for part in method.split("-") if part] if label else [],
            modality=ModalityLabels(visual=video_fake, audio=audio_fake, av=label),
            meta={"category": category, "type": type_name}
            | {key: row.get(key, "") for key in ("method", "target1", "target2", "race", "gender")},
        ))
    items = _keep_existing("fakeavceleb", list(by_path.values()), str(csv_path))
    return _entries("fakeavceleb", root, items, FAKEAVCELEB_LAYOUT, splits, split_seed, relative_to)


# ---------------------------------------------------------------------------------------------
# ASVspoof 2019 LA

ASVSPOOF2019LA_LAYOUT = """\
  ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt   lines: SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID KEY
  ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt
  ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.eval.trl.txt
  ASVspoof2019_LA_{train,dev,eval}/flac/<AUDIO_FILE_NAME>.flac
  (the root may be the LA/ folder or the folder holding LA/)"""

_ASVSPOOF_PROTOCOLS: tuple[tuple[str, str, Split], ...] = (
    ("train", "train.trn", "train"),
    ("dev", "dev.trl", "val"),
    ("eval", "eval.trl", "test"),
)
_PROTOCOL_DIR = "ASVspoof2019_LA_cm_protocols"


def _asvspoof_protocol(path: Path, audio_dir: Path, split: Split, part: str) -> Iterator[_Item]:
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 or fields[4] not in ("bonafide", "spoof"):
            raise DatasetLayoutError(
                f"asvspoof2019la: {path}:{line_no}: expected 'SPEAKER_ID AUDIO_FILE_NAME - SYSTEM_ID bonafide|spoof', "
                f"got {line!r}"
            )
        speaker, name, _, system, key = fields
        label = int(key == "spoof")
        system_id = system if system != "-" else None
        yield _Item(
            path=audio_dir / f"{name}.flac",
            label=label,
            kind="audio",
            group=f"asvspoof2019la:{speaker}",
            families=[system] if label and system_id else [],
            modality=ModalityLabels(audio=label),
            meta={"speaker": speaker, "system_id": system_id, "protocol": part},
            official=split,
        )


def asvspoof2019la_manifest(
    root: Path,
    *,
    split_seed: int = 0,
    splits: SplitFractions = DEFAULT_SPLITS,
    relative_to: Path | None = None,
) -> list[ManifestEntry]:
    """ASVspoof 2019 logical access: the CM protocols' utterances, spoofs labelled 1 with their system id.

    Splits: the official train/dev/eval are train/val/test; fusion is carved from train by speaker.
    Grouping: by speaker (the official parts already have disjoint speakers). A missing protocol
    file leaves its part out with a warning.
    """
    root = Path(root)
    _require_dir("asvspoof2019la", root, ASVSPOOF2019LA_LAYOUT)
    base = next((c for c in (root, root / "LA") if (c / _PROTOCOL_DIR).is_dir()), None)
    if base is None:
        problem = f"{root / _PROTOCOL_DIR} is missing (also looked in {root / 'LA'})"
        raise _layout_error("asvspoof2019la", problem, ASVSPOOF2019LA_LAYOUT)
    items: list[_Item] = []
    for part, suffix, split in _ASVSPOOF_PROTOCOLS:
        protocol = base / _PROTOCOL_DIR / f"ASVspoof2019.LA.cm.{suffix}.txt"
        if not protocol.is_file():
            log.warning("asvspoof2019la: %s is missing; the %s part is left out", protocol, part)
            continue
        listed = list(_asvspoof_protocol(protocol, base / f"ASVspoof2019_LA_{part}" / "flac", split, part))
        items += _keep_existing("asvspoof2019la", listed, str(protocol))
    return _entries("asvspoof2019la", root, items, ASVSPOOF2019LA_LAYOUT, splits, split_seed, relative_to)


# ---------------------------------------------------------------------------------------------
# Registry and command line

ADAPTERS: dict[str, DatasetAdapter] = {
    "ffpp": ffpp_manifest,
    "dfdc": dfdc_manifest,
    "fakeavceleb": fakeavceleb_manifest,
    "asvspoof2019la": asvspoof2019la_manifest,
}


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as `name`; an unknown name lists the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


def _parse_splits(text: str) -> list[tuple[Split, float]]:
    """'train=0.7,val=0.1,...' -> [("train", 0.7), ...] for the --splits option."""
    try:
        pairs = [(name.strip(), float(value)) for name, _, value in (part.partition("=") for part in text.split(","))]
        return check_splits(pairs)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m training.datasets NAME ROOT OUT_MANIFEST`: write a dataset's manifest.

    Paths are written relative to the manifest's folder, so the manifest can live anywhere.
    """
    parser = argparse.ArgumentParser(prog="python -m training.datasets", description=main.__doc__)
    parser.add_argument("name", choices=sorted(ADAPTERS), help="dataset layout to read")
    parser.add_argument("root", type=Path, help="the dataset's root folder")
    parser.add_argument("out", type=Path, help="manifest to write (JSON lines)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed for the splits the dataset does not define")
    parser.add_argument(
        "--splits", type=_parse_splits, default=list(DEFAULT_SPLITS),
        help="split fractions, default train=0.7,val=0.1,fusion=0.1,test=0.1",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    adapter = get_adapter(args.name)
    out: Path = args.out
    try:
        entries = adapter(args.root, split_seed=args.split_seed, splits=args.splits, relative_to=out.parent)
    except DatasetLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_manifest(entries, out)
    counts = Counter((entry.split, entry.label) for entry in entries)
    summary = ", ".join(
        f"{split} {counts[split, 0]} real/{counts[split, 1]} fake"
        for split in get_args(Split)
        if counts[split, 0] + counts[split, 1]
    )
    print(f"wrote {len(entries)} entries to {out}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
