"""What a recording chain did to a voice, summarised without any trained model: the channel profile.

The spoof head's own embedding cannot tell when it is guessing: it was trained to separate two
classes, and a recording unlike both can land deep inside one of them (the v1 head maps most real
voices from other microphones into its spoof region, where no distance test on that embedding sees
anything odd). This profile looks at the input instead, with fixed signal processing (torchaudio's
mel filterbank), so how far a file lies from the recordings a model learned from does not depend on
what that model learned:

- the long-term average spectrum of the louder half of the frames, with its overall level removed
  (`BANDS` log-mel bands, 60 Hz-7.8 kHz): microphone, bandwidth, codec and room colouring;
- the noise floor, the quietest tenth of the frames against the louder half, in `FLOOR_BANDS`
  coarse bands: background noise, hiss, digital silence, gating.

`models.ood.OODStats` fitted on the profiles of a bundle's training speech (`spectrashield fit-ood
--branch channel`) turns it into an abstention rule (`pipeline.av.judge_voice`). No Ray, no I/O.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio

SAMPLE_RATE = 16_000
BANDS = 24
FLOOR_BANDS = 6  # BANDS // FLOOR_BANDS neighbouring mel bands each
LOUD_SHARE = 0.5  # the louder half of the frames: mostly speech
QUIET_SHARE = 0.1  # the quietest tenth: the channel's floor
FLOOR_DB = -100.0  # power floor of the log: digital silence reads as -100 dB, not -inf
PROFILE_SIZE = BANDS + FLOOR_BANDS


@lru_cache(maxsize=1)
def _filterbank() -> torchaudio.transforms.MelSpectrogram:
    # 25 ms windows, 10 ms hop; stateless, so one instance serves every thread
    return torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160, n_mels=BANDS, f_min=60.0, f_max=7800.0, power=2.0,
    )


def channel_profile(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(PROFILE_SIZE,) float64: level-free average spectrum of the loud frames, then the floor per coarse band, in dB."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"channel_profile reads {SAMPLE_RATE} Hz audio, got {sample_rate}")
    samples = np.nan_to_num(np.asarray(audio, np.float32).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    if samples.size < 400:
        samples = np.pad(samples, (0, 400 - samples.size))
    with torch.inference_mode():
        power = _filterbank()(torch.from_numpy(samples))  # (BANDS, T)
        db = 10.0 * torch.log10(power.double().clamp_min(10.0 ** (FLOOR_DB / 10.0)))
    order = torch.argsort(db.mean(0))
    frames = int(order.numel())
    loud = db[:, order[int(frames * (1.0 - LOUD_SHARE)):]].mean(1)
    quiet = db[:, order[: max(1, int(frames * QUIET_SHARE))]].mean(1)
    floor = (quiet - loud).reshape(FLOOR_BANDS, BANDS // FLOOR_BANDS).mean(1)
    return torch.cat([loud - loud.mean(), floor]).numpy()
