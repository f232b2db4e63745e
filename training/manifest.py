"""The manifest every dataset source writes and every trainer/evaluator reads: one JSON object per line.

Generated benchmark and public-dataset adapters produce the same `ManifestEntry`, so training and
evaluation never care where a file came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "val", "fusion", "test"]
Kind = Literal["video", "image", "audio"]

# Manipulation families; the modality each one is visible in.
VISUAL_FAMILIES = ("face_blend", "upsample", "warp", "flicker")
AUDIO_FAMILIES = ("vocoder", "splice")
AV_FAMILIES = ("av_shift", "av_swap")
FAMILIES = VISUAL_FAMILIES + AUDIO_FAMILIES + AV_FAMILIES


class ModalityLabels(BaseModel):
    """Per-modality ground truth (1 = manipulated in that modality, None = not applicable)."""

    model_config = ConfigDict(extra="forbid")

    visual: int | None = None
    audio: int | None = None
    av: int | None = None


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file path relative to the manifest's directory")
    label: int = Field(ge=0, le=1, description="1 = fake (any manipulation), 0 = authentic")
    kind: Kind
    families: list[str] = Field(default_factory=list, description="manipulation families; empty when authentic")
    compression: str = Field("none", description="e.g. none, crf23, crf30, crf38_half, crf30x2, c23, c40")
    split: Split
    source: str = Field("synthetic", description="synthetic, ffpp, dfdc, fakeavceleb, asvspoof2019la, ...")
    modality_labels: ModalityLabels = Field(default_factory=ModalityLabels)
    group: str | None = Field(None, description="identity/source clip id; splits never share a group")
    meta: dict = Field(default_factory=dict, description="e.g. av_offset_ms, seed, method, original file")


def write_manifest(entries: Iterable[ManifestEntry], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for entry in entries:
            f.write(entry.model_dump_json() + "\n")
            n += 1
    return n


def read_manifest(path: Path) -> Iterator[ManifestEntry]:
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield ManifestEntry.model_validate(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}:{line_no}: {exc}") from exc
