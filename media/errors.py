"""Typed media errors. The ingress maps each to one HTTP status, so callers never parse messages."""


class MediaError(Exception):
    """Base class for every problem with an uploaded file."""

    http_status: int = 400


class NotMediaError(MediaError):
    """The bytes are not a container/image/audio format we can demux (HTTP 415)."""

    http_status = 415


class MediaTooLargeError(MediaError):
    """The upload or its decoded duration exceeds the configured limits (HTTP 413)."""

    http_status = 413


class DecodeDeadlineError(MediaTooLargeError):
    """Decoding ran, or at its pace would run, past `DecodeConfig.deadline_s` (HTTP 413). Unlike the other limits
    this depends on how busy the machine was as well as on the file: a cache of decoded files does not keep it."""


class UnusableMediaError(MediaError):
    """Decodable, but nothing to analyse: zero frames, zero samples, corrupt streams (HTTP 422)."""

    http_status = 422
