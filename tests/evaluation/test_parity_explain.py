"""The near-tie explanations of d2sfm.parity on tiny feature maps with known decisions."""

import numpy as np
import pytest
import torch

from d2sfm.evaluation.parity import DECISIONS, agreement, cell_decisions, explain
from d2sfm.features.pyramid import extract_pyramid


def peak_map(peaks, height=12, width=14, channels=3):
    """(1, C, H, W) zero maps with 3x3 peaks in channel 0: {(i, j): (centre, up/down, left/right)}. With
    neighbours at centre - a (rows) and centre - r*a (columns) the ratio of curvatures is r, so the edge test
    (ratio <= 5) is decided by r alone, and r = 5 sits exactly on its threshold."""
    maps = torch.zeros(1, channels, height, width)
    for (i, j), (centre, vertical, horizontal) in peaks.items():
        maps[0, 0, i, j] = centre
        maps[0, 0, [i - 1, i + 1], j] = vertical
        maps[0, 0, i, [j - 1, j + 1]] = horizontal
    return maps


def run(maps_by_level, scales, edge_threshold=5.0):
    """D2 over a pyramid whose 'backbone' returns the given maps for each level's input size (no network)."""
    by_height = {level_map.shape[2] * 4: level_map for level_map in maps_by_level}
    levels = []
    images = torch.zeros(1, 3, maps_by_level[-1].shape[2] * 4, maps_by_level[-1].shape[3] * 4)
    raw = extract_pyramid(lambda x: by_height[x.shape[2]].clone(), images, scales, edge_threshold,
                          on_level=levels.append)[0]
    return raw.keypoints_ijs.double().numpy(), levels, images.shape[2:]


def differences(here, other, distance=0.01):
    result = agreement(here[:, :2], other[:, :2])
    return here[result.ours_distance > distance], other[result.theirs_distance > distance]


def test_margins_of_known_decisions():
    maps = torch.zeros(1, 2, 5, 5)
    maps[0, 0, 1:4, 1:4] = torch.tensor([[1.0, 2.0, 1.0], [2.0, 8.0, 7.0], [1.0, 2.0, 1.0]])
    maps[0, 1, 2, 2] = 6.0
    decisions = cell_decisions(maps, *(torch.tensor([v]) for v in (0, 2, 2)))
    margin = dict(zip(DECISIONS, decisions.margin[0].tolist()))
    passed = dict(zip(DECISIONS, decisions.passed[0].tolist()))
    # channel 0 wins by 8 - 6: a change of 1 on both flips it; the local magnitude is 8
    assert decisions.channel.item() == 0 and margin["channel_maximum"] == pytest.approx(1 / 8)
    # the centre beats its right neighbour by 8 - 7
    assert passed["spatial_maximum"] and margin["spatial_maximum"] == pytest.approx(0.5 / 8)
    # dii = -12, djj = -7, dij = 0: det = 84 > 0; trace^2 = 361 <= 7.2 * 84 = 604.8
    assert passed["positive_determinant"] and passed["edge_ratio"]
    # step_j = -dj / djj = -(3) / (-7) = 0.43 < 0.5, a pass that a small change undoes
    assert passed["offset_j"] and margin["offset_j"] < margin["offset_i"]


def test_a_rounding_size_flip_is_explained_both_ways():
    """An edge test decided by 1e-6 relative: one run keeps the keypoint, the other drops it."""
    steady = {(3, 3): (10.0, 8.0, 7.0)}
    narrowly_round = peak_map({**steady, (7, 9): (10.0, 9.0, 5.0 + 1e-5)})
    narrowly_edge = peak_map({**steady, (7, 9): (10.0, 9.0, 5.0 - 1e-5)})
    here, here_levels, size = run([narrowly_round], (1.0,))
    other, other_levels, _ = run([narrowly_edge], (1.0,))
    here_only, other_only = differences(here, other)
    assert len(here_only) == 1 and len(other_only) == 0 and len(other) == 1
    for levels, ours, theirs in ((here_levels, here_only, other_only), (other_levels, other_only, here_only)):
        (explanation,) = explain(levels, tuple(size), ours, theirs, tolerance=1e-5)
        assert explanation.explained and explanation.decision == "edge_ratio", str(explanation)
        assert explanation.margin < 1e-6


def test_a_different_threshold_is_not_explained():
    """A keypoint that only an edge threshold of 8 lets through (curvature ratio 6.5) is far from the original's
    threshold of 5: no near-tie explains it."""
    maps = peak_map({(3, 3): (10.0, 8.0, 7.0), (7, 9): (10.0, 9.0, 10.0 - 6.5)})
    original, levels, size = run([maps], (1.0,))
    relaxed, _, _ = run([maps], (1.0,), edge_threshold=8.0)
    here_only, other_only = differences(original, relaxed)
    assert len(here_only) == 0 and len(other_only) == 1
    (explanation,) = explain(levels, tuple(size), here_only, other_only, tolerance=1e-4)
    assert not explanation.explained and explanation.margin == float("inf")


def test_a_ban_from_a_coarser_near_tie_is_explained():
    """A coarse peak narrowly detected in one run bans the fine cells under it; in the other it narrowly fails the
    edge test and the fine level detects there. Both differences trace back to the coarse near-tie."""
    fine = peak_map({(6, 8): (100.0, 60.0, 60.0)})
    round_coarse = peak_map({(3, 4): (10.0, 9.0, 5.0 + 1e-5)}, height=6, width=7)
    edge_coarse = peak_map({(3, 4): (10.0, 9.0, 5.0 - 1e-5)}, height=6, width=7)
    here, here_levels, size = run([round_coarse, fine], (0.5, 1.0))
    other, other_levels, _ = run([edge_coarse, fine], (0.5, 1.0))
    here_only, other_only = differences(here, other)
    assert here_only[:, 2].tolist() == [2.0] and other_only[:, 2].tolist() == [1.0]
    for levels, ours, theirs in ((here_levels, here_only, other_only), (other_levels, other_only, here_only)):
        explanations = explain(levels, tuple(size), ours, theirs, tolerance=1e-5)
        assert all(e.explained for e in explanations), [str(e) for e in explanations]
        fine_level = [e for e in explanations if e.level == 1]
        assert fine_level and fine_level[0].decision == "level 0 cell (3, 4) edge_ratio"


def test_a_sensitive_sub_pixel_offset_is_explained_and_a_robust_one_is_not():
    """A nearly flat peak (curvature 2e-4 of its height) moves 0.02 px for a 2e-7 relative change of one value;
    a sharp peak that moves as far needs a large change."""
    flat = peak_map({(5, 5): (10.0, 10.0 - 1e-4, 10.0 - 1e-4)})
    tilted = flat.clone()
    tilted[0, 0, 6, 5] += 2e-6
    for maps, changed, tolerance, expected in ((flat, tilted, 1e-6, True),
                                               (peak_map({(5, 5): (10.0, 5.0, 5.0)}), None, 1e-4, False)):
        here, levels, size = run([maps], (1.0,))
        other = here + [0.02, 0.0, 0.0] if changed is None else run([changed], (1.0,))[0]
        here_only, other_only = differences(here, other)
        assert len(here_only) == len(other_only) == 1
        explanations = explain(levels, tuple(size), here_only, other_only, tolerance)
        assert [e.explained for e in explanations] == [expected, expected], [str(e) for e in explanations]
        assert all(e.decision == "sub-pixel offset" or not expected for e in explanations)


def test_agreement_shares():
    ours = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    theirs = np.array([[0.0, 0.005], [1.0, 1.02]])
    result = agreement(ours, theirs)
    assert result.ours_within(0.01) == pytest.approx(1 / 3)
    assert result.theirs_within(0.01) == pytest.approx(1 / 2)
    assert result.count_difference == pytest.approx(0.5)
