"""select_keyframes / find_hotspots: diversity, suspicion, hotspot timing and edge cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from media import Hotspot, find_hotspots, select_keyframes
from media.keyframes import motion_statistics

STEP = 0.1  # grid step of the synthetic clips, seconds


def three_act_clip(n_per_act: int = 10, seed: int = 0) -> np.ndarray:
    """`(3 * n, 96, 128, 3)`: a static scene, then a slowly drifting square, then a fast one."""
    rng = np.random.default_rng(seed)
    background = rng.integers(60, 120, (96, 128, 3)).astype(np.uint8)
    frames = []
    for act, speed in enumerate((0, 1, 6)):
        for i in range(n_per_act):
            frame = background.copy()
            x = 20 + speed * i
            frame[30:60, x : x + 30] = (230, 200, 40) if act else (40, 40, 40)
            frames.append(frame)
    return np.stack(frames)


def test_grey_flow_frames_select_what_rgb_frames_do() -> None:
    """KeyframeSelector reads `Clip.flow_frames` (grey, <= FLOW_MAX_SIDE) instead of RGB frames."""
    from media.keyframes import small_gray

    frames = np.repeat(three_act_clip(), 2, axis=1).repeat(2, axis=2)  # (30, 192, 256, 3): resized on the way
    grey = np.stack([small_gray(f) for f in frames])
    scores = np.random.default_rng(3).random(len(frames))
    times = np.arange(len(frames)) * STEP
    from_rgb = select_keyframes(frames, times, scores, k=4, hotspot_threshold=0.6)
    from_grey = select_keyframes(grey, times, scores, k=4, hotspot_threshold=0.6)
    assert from_grey.keyframes == from_rgb.keyframes and from_grey.hotspots == from_rgb.hotspots
    np.testing.assert_array_equal(from_grey.motion, from_rgb.motion)


def test_precomputed_motion_selects_what_computing_it_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The served graph computes motion beside triage and passes it in: same selection, no second flow."""
    import media.keyframes

    frames = three_act_clip()
    times = np.arange(len(frames)) * STEP
    scores = np.random.default_rng(5).random(len(frames))
    computed = select_keyframes(frames, times, scores, k=4)
    motion = motion_statistics(frames)
    monkeypatch.setattr(media.keyframes, "motion_statistics", lambda frames: pytest.fail("flow computed again"))
    given = select_keyframes(frames, times, scores, k=4, motion=motion)
    assert given.keyframes == computed.keyframes and given.hotspots == computed.hotspots
    np.testing.assert_array_equal(given.motion, computed.motion)
    with pytest.raises(ValueError, match="motion statistics cover 29 frames"):
        select_keyframes(frames, times, scores, k=4, motion=(motion[0][1:], motion[1][1:]))


def test_keyframes_are_diverse_suspicious_and_sorted() -> None:
    frames = three_act_clip()
    times = np.arange(len(frames)) * STEP
    scores = np.full(len(frames), 0.1)
    scores[12:17] = 0.8
    scores[14] = 0.97  # the most suspicious frame
    selection = select_keyframes(frames, times, scores, k=4)
    indices = [kf.index for kf in selection.keyframes]
    assert len(indices) == 4 and len(set(indices)) == 4
    assert indices == sorted(indices)
    assert 14 in indices
    acts = {i // 10 for i in indices}
    assert acts == {0, 1, 2}  # one keyframe per kind of motion at least
    for kf in selection.keyframes:
        assert kf.t == pytest.approx(times[kf.index]) and kf.score == pytest.approx(scores[kf.index])
    motion = selection.motion  # (T,)
    assert motion.shape == (30,)
    assert motion[1:10].max() < 0.05 < motion[21:30].mean()  # static act vs fast act
    assert motion[11:20].mean() < motion[21:30].mean()


def test_hotspot_matches_injected_run() -> None:
    frames = three_act_clip()
    times = 2.0 + np.arange(len(frames)) * STEP  # clips need not start at zero
    scores = np.full(len(frames), 0.2)
    scores[12:17] = [0.6, 0.7, 0.9, 0.7, 0.6]
    selection = select_keyframes(frames, times, scores, k=3, hotspot_threshold=0.5)
    assert len(selection.hotspots) == 1
    hotspot = selection.hotspots[0]
    assert hotspot.start == pytest.approx(times[12])
    assert hotspot.end == pytest.approx(times[16] + STEP)
    assert hotspot.score == pytest.approx(0.7)
    assert any(kf.index == 14 for kf in selection.keyframes)


def test_hotspots_several_runs_edges_and_minimum_length() -> None:
    times = np.arange(10) * STEP
    scores = np.array([0.9, 0.9, 0.1, 0.5, 0.1, 0.1, 0.6, 0.7, 0.8, 0.9])
    hotspots = find_hotspots(times, scores, threshold=0.5)
    assert [(round(h.start, 6), round(h.end, 6)) for h in hotspots] == [(0.0, 0.2), (0.3, 0.4), (0.6, 1.0)]
    assert hotspots[2].score == pytest.approx(0.75)
    assert [h.start for h in find_hotspots(times, scores, 0.5, min_duration_s=0.15)] == pytest.approx([0.0, 0.6])
    assert find_hotspots(times, np.zeros(10), 0.5) == []
    assert find_hotspots(np.zeros(0), np.zeros(0), 0.5) == []


def test_static_clip_with_flat_scores_still_spreads_keyframes() -> None:
    frames = np.repeat(three_act_clip()[:1], 40, axis=0)
    selection = select_keyframes(frames, np.arange(40) * STEP, np.full(40, 0.3), k=4)
    indices = [kf.index for kf in selection.keyframes]
    assert len(set(indices)) == 4
    assert max(np.diff(indices)) < 25 and indices[-1] - indices[0] >= 20


def test_unsure_scores_with_a_warm_up_transient_do_not_bunch_keyframes() -> None:
    """An untrained LSTM scores frame 0 a little higher and then drifts by ~1e-4: such noise must not
    pull every keyframe to the start of the clip."""
    frames = np.concatenate([three_act_clip(seed=s) for s in range(4)])[:100]  # varied motion, 10 s
    scores = 0.4928 + 0.003 * np.exp(-np.arange(100) / 2.0)
    selection = select_keyframes(frames, np.arange(100) * STEP, scores, k=4)
    times = [kf.t for kf in selection.keyframes]
    assert times[-1] - times[0] >= 3.0, times
    assert sum(t < 1.0 for t in times) <= 1, times


def test_a_clearly_suspicious_frame_is_still_chosen() -> None:
    frames = np.concatenate([three_act_clip(seed=s) for s in range(4)])[:100]
    scores = np.full(100, 0.3)
    scores[57] = 0.9
    selection = select_keyframes(frames, np.arange(100) * STEP, scores, k=4)
    assert 57 in [kf.index for kf in selection.keyframes]


def test_deterministic_for_a_seed() -> None:
    frames = three_act_clip(seed=3)
    scores = np.random.default_rng(1).uniform(size=len(frames))
    times = np.arange(len(frames)) * STEP
    first = select_keyframes(frames, times, scores, k=5, seed=11)
    again = select_keyframes(frames, times, scores, k=5, seed=11)
    assert first.keyframes == again.keyframes and first.hotspots == again.hotspots
    np.testing.assert_array_equal(first.motion, again.motion)


def test_empty_clip() -> None:
    selection = select_keyframes(np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0), np.zeros(0))
    assert selection.keyframes == [] and selection.hotspots == [] and selection.motion.shape == (0,)


def test_single_frame() -> None:
    selection = select_keyframes(three_act_clip()[:1], np.array([0.0]), np.array([0.8]), k=4)
    assert [(kf.index, kf.t, kf.score) for kf in selection.keyframes] == [(0, 0.0, 0.8)]
    assert selection.hotspots == [Hotspot(start=0.0, end=0.0, score=0.8)]
    np.testing.assert_array_equal(selection.motion, [0.0])


def test_fewer_frames_than_k_returns_all_frames() -> None:
    frames = three_act_clip()[18:21]
    selection = select_keyframes(frames, np.arange(3) * STEP, np.array([0.2, 0.9, 0.4]), k=4)
    assert [kf.index for kf in selection.keyframes] == [0, 1, 2]


def test_inconsistent_inputs_are_rejected() -> None:
    frames = three_act_clip()[:5]
    with pytest.raises(ValueError):
        select_keyframes(frames, np.arange(4) * STEP, np.zeros(5))
    with pytest.raises(ValueError):
        select_keyframes(frames, np.arange(5) * STEP, np.zeros(5), k=0)


def test_motion_statistics_measure_a_known_shift() -> None:
    """A textured frame panning 3 px per frame, then holding still: the flow magnitude says so."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (120, 260)).astype(np.float32), (0, 0), 3)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    offsets = [3 * i for i in range(10)] + [27] * 10  # x offset of each frame's window
    frames = np.stack([np.repeat(texture[15:105, x : x + 160, None], 3, axis=2) for x in offsets])  # (20, 90, 160, 3)
    means, stds = motion_statistics(frames)
    assert np.all(np.abs(means[1:10] - 3.0) < 0.6), means[1:10]
    assert np.all(means[11:] < 0.3), means[11:]
    assert means[0] == means[1] and stds[0] == stds[1]
