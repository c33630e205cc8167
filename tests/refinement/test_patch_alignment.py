"""Affine patch alignment on tiny inputs: a textured image and a copy warped by a known affinity with a change of
exposure, so every true position is exact. Its effect on real reconstructions is tested in test_reconstruct.py
and the localization tests."""

import cv2
import numpy as np
import pytest
import torch

from d2sfm.refinement.patch_alignment import AlignmentSettings, align_keypoints, anchors_and_maps, local_affinities
from d2sfm.refinement.tracks import build_tracks


def texture(size=240, seed=0):
    """Blurred noise: texture at every scale the alignment looks at, no flat region."""
    noise = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 2.0) * 4 - 1.5


def warp_affine(image, affine):
    """``image`` warped by the 2x3 ``affine`` taking COLMAP-convention positions (pixel centres at +0.5) of
    ``image`` to those of the result."""
    to_centres = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # OpenCV's pixel centres are at integers
    full = to_centres @ np.vstack([affine, [0, 0, 1]]) @ np.linalg.inv(to_centres)
    return cv2.warpAffine(image, full[:2], image.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def known_pair(scale=0.85, degrees=12.0, seed=0, count=40):
    image = texture(seed=seed)
    angle = np.radians(degrees)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    affine = np.hstack([linear, (np.array([120.0, 120.0]) - linear @ [120.0, 120.0])[:, None]])
    warped = 0.7 * warp_affine(image, affine) + 0.2  # another exposure
    rng = np.random.default_rng(seed)
    first = rng.uniform(60, 180, (count, 2))
    truth = first @ linear.T + affine[:, 2]
    return image, warped, first, truth, linear, rng


def align_pair(image, warped, first, second, maps, settings=None):
    matches = {(1, 2): np.stack([np.arange(len(first)), np.arange(len(first))], axis=1)}
    tracks = build_tracks(matches)
    positions = {1: first, 2: second}
    xy = np.stack([positions[i][k] for i, k in zip(tracks.image_ids, tracks.keypoint_ids)])
    edge_maps = maps[tracks.keypoint_ids[tracks.edges[:, 0]]]
    images = {1: image.astype(np.float32), 2: warped.astype(np.float32)}
    result = align_keypoints(tracks, xy, edge_maps, tracks.image_ids == 1, images.__getitem__,
                             settings or AlignmentSettings(), torch.device("cpu"))
    fixed = tracks.image_ids == 1
    assert np.array_equal(result.positions[fixed], xy[fixed]) and not result.moving[fixed].any()
    own = tracks.image_ids == 2
    order = np.argsort(tracks.keypoint_ids[own])
    return result.positions[own][order], result.aligned[own][order], result


# the baseline of benchmarks/refine_cost.py
FULL_SIZE_EVERY_ITERATION = AlignmentSettings(pyramid=False, converged_px=None, min_coarse_correlation=None)


@pytest.mark.parametrize("settings", [AlignmentSettings(), FULL_SIZE_EVERY_ITERATION], ids=["pyramid", "full-size"])
@pytest.mark.parametrize("seed", [0, 1])
def test_alignment_recovers_the_true_positions_under_a_change_of_view(seed, settings):
    """Starting 2 px off, with the affinity only known from noisy neighbouring matches, every keypoint of the
    warped view lands within a tenth of a pixel of the truth; the fixed view's keypoints do not move. The same
    with the coarse level on the downsampled image and converged keypoints stopping early (the default) as with
    every level at full size and every iteration."""
    image, warped, first, truth, linear, rng = known_pair(seed=seed)
    angles = rng.uniform(0, 2 * np.pi, len(first))
    start = truth + 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    maps = local_affinities(first + rng.normal(0, 0.5, first.shape), start, 12)
    assert 0.02 < np.abs(maps - linear).max() < 0.2  # a rough start, not the truth
    positions, aligned, result = align_pair(image, warped, first, start, maps, settings)
    errors = np.linalg.norm(positions - truth, axis=1)
    assert aligned.all() and np.median(errors) < 0.05 and errors.max() < 0.1
    assert not result.aligned[~result.moving].any()


def test_a_keypoint_on_the_wrong_patch_keeps_its_position():
    """A match 30 px off is no longer the same patch: no good fit within max_shift, so it stays where it was;
    a flat region has nothing to align and stays too."""
    image, warped, first, truth, linear, rng = known_pair()
    start = truth.copy()
    start[0] += [30.0, 0.0]
    warped = warped.copy()
    x, y = truth[1].astype(int)
    warped[y - 15:y + 15, x - 15:x + 15] = 0.5  # flat
    maps = np.repeat(linear[None], len(first), axis=0)
    positions, aligned, _ = align_pair(image, warped, first, start, maps)
    assert not aligned[0] and np.array_equal(positions[0], start[0])
    assert not aligned[1] and np.array_equal(positions[1], start[1])
    assert aligned[2:].mean() > 0.9
    # why the correlation threshold stays at 0.9: the wrong match finds another patch that correlates above 0.8
    # with a position certain enough to pass the uncertainty gate
    positions, aligned, _ = align_pair(image, warped, first, start, maps, AlignmentSettings(min_correlation=0.8))
    assert aligned[0] and np.linalg.norm(positions[0] - truth[0]) > 20


def test_hopeless_fits_give_up_and_good_ones_are_untouched():
    """A fit still correlating under min_coarse_correlation after give_up_after iterations stops there (the wrong
    match 30 px off); the fits that align land where they land when nothing gives up."""
    image, warped, first, truth, linear, rng = known_pair()
    start = truth + rng.normal(0, 1.0, truth.shape)
    start[0] += [30.0, 0.0]
    maps = np.repeat(linear[None], len(first), axis=0)
    giving_up, aligned, _ = align_pair(image, warped, first, start, maps, AlignmentSettings(give_up_after=3))
    never, aligned_never, _ = align_pair(image, warped, first, start, maps, AlignmentSettings(give_up_after=None))
    assert not aligned[0] and not aligned_never[0]
    assert np.array_equal(aligned, aligned_never) and aligned[1:].all()
    np.testing.assert_allclose(giving_up[aligned], never[aligned], atol=1e-6)


def test_chunks_and_batches_give_the_same_result_and_large_tracks_are_left_alone():
    """Chunks of tracks, Gauss-Newton batches and groups of image stacks only bound memory: the CPU's small
    batches, a GPU's large ones, and one keypoint and one image at a time all land at the same positions."""
    image, warped, first, truth, linear, rng = known_pair(count=30)
    start = truth + rng.normal(0, 1.0, truth.shape)
    maps = np.repeat(linear[None], len(first), axis=0)
    whole, aligned, _ = align_pair(image, warped, first, start, maps)
    assert aligned.all()
    for settings in (AlignmentSettings(max_nodes=7), AlignmentSettings(max_rows=1, max_stack_bytes=1),
                     AlignmentSettings(max_rows=8192, max_stack_bytes=2**29)):
        batched, _, _ = align_pair(image, warped, first, start, maps, settings)
        assert np.allclose(whole, batched, atol=1e-4), settings
    _, aligned, _ = align_pair(image, warped, first, start, maps, AlignmentSettings(max_track_size=1))
    assert not aligned.any()  # tracks over the size limit (merged chains) are left as they are


def test_local_affinities_and_their_composition_along_a_track():
    """Exact matches give the exact affinity; a node reached through another is given the composed map from its
    anchor's view (the best-connected node, or a fixed one)."""
    rng = np.random.default_rng(0)
    a_to_b = np.array([[0.9, -0.2], [0.25, 1.1]])
    b_to_c = np.array([[1.2, 0.1], [0.0, 0.8]])
    xy_a = rng.uniform(0, 100, (30, 2))
    xy_b = xy_a @ a_to_b.T + [5, 7]
    assert np.allclose(local_affinities(xy_a, xy_b, 8), a_to_b)
    assert np.allclose(local_affinities(xy_a[:3], xy_b[:3], 8), np.eye(2))  # too few: identity
    tracks = build_tracks({(1, 2): np.array([[0, 0], [1, 1]]), (2, 3): np.array([[0, 0]])})
    node = {(int(i), int(k)): n for n, (i, k) in enumerate(zip(tracks.image_ids, tracks.keypoint_ids))}
    edge_maps = np.stack([a_to_b, a_to_b, b_to_c])  # in the order of the matches
    fixed = tracks.image_ids == 1
    anchors, maps = anchors_and_maps(tracks, edge_maps, fixed)
    assert anchors[node[(3, 0)]] == node[(1, 0)]
    assert np.allclose(maps[node[(3, 0)]], b_to_c @ a_to_b)
    assert np.allclose(maps[node[(1, 0)]], np.eye(2))
    free, free_maps = anchors_and_maps(tracks, edge_maps, np.zeros(len(fixed), bool))
    assert free[node[(1, 0)]] == node[(2, 0)]  # the middle node has two matches
    assert np.allclose(free_maps[node[(1, 0)]], np.linalg.inv(a_to_b))


def test_a_fit_that_can_slide_is_not_trusted():
    """On a straight edge the patch fits equally well anywhere along it: the fit correlates perfectly but its
    position is uncertain along the edge, so the keypoint keeps its detection; without the uncertainty gate the
    same fit would be taken. Textured keypoints of the same pair are certain to a few hundredths of a pixel."""
    image, warped, first, truth, linear, rng = known_pair(degrees=0.0, scale=1.0)
    edge = cv2.GaussianBlur((np.arange(240)[None, :] >= 120).astype(np.float32).repeat(240, 0), (0, 0), 1.5)
    image, warped = image.copy(), warped.copy()
    image[:, 100:140], warped[:, 100:140] = edge[:, 100:140], 0.7 * edge[:, 100:140] + 0.2  # a vertical edge
    first[0] = truth[0] = [120.0, 80.0]
    start = truth + rng.normal(0, 0.7, truth.shape)
    start[0] = [120.5, 83.0]  # 3 px along the edge
    maps = np.repeat(linear[None], len(first), axis=0)
    positions, aligned, result = align_pair(image, warped, first, start, maps)
    node = len(first)  # nodes are numbered image by image, keypoint by keypoint: the second image's first keypoint
    assert not aligned[0] and np.array_equal(positions[0], start[0])
    assert result.correlation[node] > 0.95 and result.uncertainty[node] > 1.0
    textured = np.abs(truth[:, 0] - 120) > 35  # patches clear of the edge's band
    errors = np.linalg.norm(positions - truth, axis=1)[textured & aligned]
    assert aligned[textured].mean() > 0.9 and np.median(errors) < 0.05
    assert np.median(result.uncertainty[node:][textured]) < 0.05
    ungated, aligned_ungated, _ = align_pair(image, warped, first, start, maps,
                                             AlignmentSettings(max_uncertainty=None))
    assert aligned_ungated[0] and abs(ungated[0, 1] - truth[0, 1]) > 1.0  # taken, still 3 px off along the edge


def test_uncertainty_grows_with_image_noise():
    """The reported uncertainty follows the fit's real precision: more noise in the view, a larger uncertainty,
    and the positions' scatter about the truth is of its order. The estimate counts every sample as independent;
    after the final blur (sigma 1 px, samples 1 px apart) white noise is correlated over about 4 pi sigma^2
    samples, so the true scatter is about sqrt(4 pi) = 3.5 times the estimate (3.4 measured)."""
    image, warped, first, truth, linear, rng = known_pair(count=40)
    maps = np.repeat(linear[None], len(first), axis=0)
    start = truth + rng.normal(0, 1.0, truth.shape)
    medians, scatters = [], []
    for noise in (0.01, 0.1):
        noisy = warped + np.random.default_rng(1).normal(0, noise, warped.shape).astype(np.float32)
        positions, aligned, result = align_pair(image, noisy, first, start, maps,
                                                AlignmentSettings(max_uncertainty=None))
        medians.append(np.nanmedian(result.uncertainty[result.moving]))
        scatters.append(np.sqrt(np.mean(np.sum((positions - truth) ** 2, axis=1) / 2)))
    assert medians[1] > 3 * medians[0]
    assert 1.5 < scatters[1] / medians[1] < 6
