"""The decode stage: upload bytes -> `Clip` (PyAV + faces, under the config's budgets)."""

from __future__ import annotations

from media import Clip, DecodeConfig, decode_media


def decode(data: bytes, config: DecodeConfig, keep_frames: bool = False) -> Clip:
    """Decode one upload. Without `keep_frames` the full frames are dropped: no later stage reads them,
    and they are ~90 % of the clip's bytes (what the served decoder puts in the object store)."""
    clip = decode_media(data, config)
    return clip if keep_frames else clip.without_frames()
