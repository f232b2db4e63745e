"""FastTriage on clips of different lengths in one padded batch: each scores as it would alone."""

from __future__ import annotations

import pytest
import torch

from models import FastTriage
from models.triage import TEST_CONFIG, FastTriageConfig


@pytest.mark.parametrize("config", [TEST_CONFIG, FastTriageConfig()], ids=["test", "default"])
def test_padded_batch_with_lengths_matches_each_clip_alone(config) -> None:
    torch.manual_seed(0)
    model = FastTriage(config).eval()
    g = torch.Generator().manual_seed(1)
    clips = [torch.rand(n, 3, 96, 96, generator=g) for n in (7, 2, 12, 1)]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.rand(len(clips), 12, 3, 96, 96, generator=g) * 10  # garbage that must never be read
    for i, clip in enumerate(clips):
        padded[i, : len(clip)] = clip
    with torch.inference_mode():
        batched = model(padded, lengths)
        for i, clip in enumerate(clips):
            alone = model(clip.unsqueeze(0))
            torch.testing.assert_close(batched.clip_logit[i], alone.clip_logit[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.frame_logits[i, : len(clip)], alone.frame_logits[0], atol=1e-5, rtol=1e-4)
            assert (batched.frame_logits[i, len(clip) :] == 0).all()


def test_full_lengths_equal_no_lengths() -> None:
    model = FastTriage(TEST_CONFIG).eval()
    frames = torch.rand(3, 5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        plain, packed = model(frames), model(frames, torch.tensor([5, 5, 5]))
    torch.testing.assert_close(packed.clip_logit, plain.clip_logit, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.frame_logits, plain.frame_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lengths", [[5, 0], [5, 6], [5]], ids=["zero", "too-long", "wrong-count"])
def test_bad_lengths_are_refused(lengths) -> None:
    model = FastTriage(TEST_CONFIG).eval()
    with pytest.raises(ValueError, match="lengths"):
        model(torch.rand(2, 5, 3, 32, 32), torch.tensor(lengths))


def test_clips_match_the_padded_batch_and_an_empty_clip_is_refused() -> None:
    model = FastTriage(TEST_CONFIG).eval()
    g = torch.Generator().manual_seed(3)
    clips = [torch.rand(n, 3, 48, 48, generator=g) for n in (4, 9, 6)]
    lengths = torch.tensor([len(c) for c in clips])
    padded = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)  # (3, 9, 3, 48, 48)
    with torch.inference_mode():
        listed = model.forward_clips(clips)
        reference = model(padded, lengths)
        same = model.forward_clips([clips[1], clips[1]])  # equal lengths: the path without padding
        alone = model(clips[1].unsqueeze(0))
    torch.testing.assert_close(listed.clip_logit, reference.clip_logit)
    torch.testing.assert_close(listed.frame_logits, reference.frame_logits)
    torch.testing.assert_close(same.clip_logit, alone.clip_logit.expand(2), atol=1e-5, rtol=1e-4)
    for bad in ([], [clips[0], clips[0][:0]]):
        with pytest.raises(ValueError, match="at least one clip"):
            model.forward_clips(bad)
