"""Featuremetric keypoint refinement on tiny inputs: tracks from matches, bilinear sampling, and the adjustment
recovering known shifts. Its effect on a real reconstruction is tested in test_reconstruct.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2sfm.refinement.keypoint_adjustment import AdjustmentSettings, adjust_keypoints, sample_patches
from d2sfm.refinement.tracks import build_tracks


def test_tracks_are_the_connected_keypoints_of_verified_matches():
    verified = {(1, 2): np.array([[0, 5], [1, 6]]), (2, 3): np.array([[5, 9]]), (1, 3): np.array([[4, 8]])}
    tracks = build_tracks(verified)
    node = {(int(i), int(k)): n for n, (i, k) in enumerate(zip(tracks.image_ids, tracks.keypoint_ids))}
    assert len(node) == 7 and len(tracks.edges) == 4
    same = lambda a, b: tracks.track_ids[node[a]] == tracks.track_ids[node[b]]  # noqa: E731
    assert same((1, 0), (3, 9)) and same((2, 5), (3, 9))  # 1:0 - 2:5 - 3:9
    assert same((1, 4), (3, 8)) and not same((1, 0), (1, 4)) and not same((1, 1), (1, 0))
    assert sorted(tracks.track_sizes()) == [2, 2, 3]
    assert build_tracks({}).num_tracks == 0


def smooth_field(channels=16, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    field = torch.randn(1, channels, size // 8, size // 8, generator=generator)
    return F.normalize(F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)[0], dim=0)


def test_bilinear_samples_and_derivatives_match_finite_differences():
    patches = smooth_field(channels=4, size=8)[None].repeat(3, 1, 1, 1)
    xy = torch.tensor([[3.3, 2.6], [4.1, 4.9], [2.5, 3.5]], dtype=torch.float64)
    nodes = torch.arange(3)
    values, jacobian = sample_patches(patches.double(), nodes, xy)
    step = 1e-4
    for axis in range(2):
        offset = torch.zeros(2, dtype=torch.float64)
        offset[axis] = step
        ahead, _ = sample_patches(patches.double(), nodes, xy + offset, gradient=False)
        behind, _ = sample_patches(patches.double(), nodes, xy - offset, gradient=False)
        assert torch.allclose(jacobian[..., axis], (ahead - behind) / (2 * step), atol=1e-6)
    # at integer positions the sample is the patch's own value
    exact, _ = sample_patches(patches, nodes[:1], torch.tensor([[3.0, 2.0]]), gradient=False)
    assert torch.allclose(exact[0], patches[0, :, 2, 3])


@pytest.mark.parametrize("seed", [0, 1])
def test_adjustment_recovers_known_shifts_of_a_track(seed):
    """Three views of one feature field; the keypoints of views 2 and 3 are detected off by known sub-pixel
    amounts. Patches are cut around the detections; the adjustment must move them back onto view 1's point."""
    field = smooth_field(seed=seed)
    size, centre = 8, torch.tensor([30.4, 27.7])  # the true point, (x, y) in the field
    errors = torch.tensor([[0.0, 0.0], [1.3, -0.8], [-1.1, -1.4]])  # view 1 is the best connected, held still
    detections = centre + errors

    def cut(xy):  # an 8x8 patch of field pixels whose central cell holds xy
        origin = xy.floor().long() - (size // 2 - 1)
        return field[:, origin[1]:origin[1] + size, origin[0]:origin[0] + size], xy - origin

    cut_patches, centres = zip(*(cut(xy) for xy in detections))
    patches, centres = torch.stack(cut_patches), torch.stack(centres)
    edges = np.array([[0, 1], [0, 2], [1, 2], [0, 1]])  # node 0 has the most matches
    displacement, report = adjust_keypoints(patches, centres, np.zeros(3, np.int64), edges,
                                            AdjustmentSettings(iterations=50))
    assert report.cost_after < 0.05 * report.cost_before
    assert torch.allclose(displacement[0], torch.zeros(2))
    assert torch.allclose(detections + displacement, centre.expand(3, 2), atol=0.1), detections + displacement


def test_displacements_stay_within_the_patch_and_lone_large_tracks_are_untouched():
    field = smooth_field(seed=3)
    patches = torch.stack([field[:, 10:18, 10:18], field[:, 40:48, 40:48]])  # unrelated points
    centres = torch.full((2, 2), 3.5)
    displacement, _ = adjust_keypoints(patches, centres, np.zeros(2, np.int64), np.array([[0, 1]]))
    assert ((centres + displacement) >= 0).all() and ((centres + displacement) <= 7).all()
    # a track larger than the largest bucket is left as detected
    many = 300
    patches = field[:, 20:28, 20:28][None].repeat(many, 1, 1, 1)
    chain = np.stack([np.arange(many - 1), np.arange(1, many)], axis=1)
    displacement, report = adjust_keypoints(patches, torch.full((many, 2), 3.2), np.zeros(many, np.int64), chain)
    assert report.tracks_adjusted == 0 and not displacement.any()


def test_fixed_keypoints_stay_and_the_free_ones_align_to_them():
    """Localization's query pass: database keypoints fixed, a query's keypoint moves onto them."""
    field = smooth_field(seed=2)
    size, centre = 8, torch.tensor([25.6, 33.2])
    detections = centre + torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.9, 1.2]])
    origins = detections.floor().long() - (size // 2 - 1)
    patches = torch.stack([field[:, y:y + size, x:x + size] for x, y in origins.tolist()])
    edges = np.array([[0, 2], [1, 2], [0, 2]])  # the query (node 2) is the best connected, yet it moves
    fixed = np.array([True, True, False])
    displacement, _ = adjust_keypoints(patches, detections - origins, np.zeros(3, np.int64), edges,
                                       AdjustmentSettings(iterations=50), fixed)
    assert not displacement[fixed].any()
    assert torch.allclose(detections[2] + displacement[2], centre, atol=0.15), detections[2] + displacement[2]
    _, report = adjust_keypoints(patches, detections - origins, np.zeros(3, np.int64), edges,
                                 fixed=np.ones(3, bool))
    assert report.tracks_adjusted == 0
