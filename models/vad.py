"""Is anyone speaking? Silero VAD (MIT), the TorchScript model that ships inside the `silero-vad` package.

The spoof head and the lip-sync model judge speech: on music, wind or silence their scores are
noise, and a confident noise is exactly the error this service must not make. The AV stage asks
this first and lets both abstain (`no_speech`) when too little speech is heard. Loaded from the
package's own file (nothing is downloaded), once per process. No Ray.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16_000
# The TorchScript model keeps its recurrent state inside: two threads running it at once corrupt each
# other's state and, seen under the hostile-input campaign, the heap ("corrupted size vs. prev_size",
# SIGABRT in the AVAlignment replica, whose requests run in worker threads). One call at a time.
_MODEL_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _model() -> torch.jit.ScriptModule:
    from silero_vad import load_silero_vad  # the package's bundled silero_vad.jit

    return load_silero_vad()


def speech_seconds(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold: float = 0.5) -> float:
    """Seconds of speech Silero VAD finds in mono float audio at 16 kHz."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"speech_seconds reads {SAMPLE_RATE} Hz audio, got {sample_rate}")
    if audio.size < 512:
        return 0.0
    from silero_vad import get_speech_timestamps

    samples = torch.from_numpy(np.nan_to_num(np.array(audio, np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    with _MODEL_LOCK, torch.inference_mode():
        spans = get_speech_timestamps(samples, _model(), threshold=threshold, sampling_rate=SAMPLE_RATE)
    return float(sum(s["end"] - s["start"] for s in spans)) / SAMPLE_RATE
