"""The bundle adjustment that finishes a model: rounds of adjustment and filtering (adjust_and_filter)."""

import numpy as np
import pycolmap
import pytest

from d2sfm.sfm.cameras import INTRINSICS_REFINEMENT
from d2sfm.sfm.mapping import adjust_and_filter, bundle_adjust

HELD = INTRINSICS_REFINEMENT["none"]


def noisy_model_with_outliers(seed: int = 0, outlier_px: float = 15.0):
    """A synthetic model (8 views, 400 points, exact poses), every observation moved by 0.3 px of noise and one
    observation of every tenth point by ``outlier_px``; returns it and the planted (image id, 2D point index)."""
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 1, 1, 8
    options.num_points3D = 400
    pycolmap.set_random_seed(seed)
    model = pycolmap.synthesize_dataset(options)
    rng = np.random.default_rng(seed)
    for image in model.images.values():
        for index in range(image.num_points2D()):
            image.points2D[index].xy = image.points2D[index].xy + rng.normal(0, 0.3, 2)
    planted = []
    for point_id in sorted(model.points3D)[::10]:
        element = model.points3D[point_id].track.elements[0]
        angle = rng.uniform(0, 2 * np.pi)
        point2D = model.images[element.image_id].points2D[element.point2D_idx]
        point2D.xy = point2D.xy + outlier_px * np.array([np.cos(angle), np.sin(angle)])
        planted.append((element.image_id, element.point2D_idx))
    return model, planted


def centres(model: pycolmap.Reconstruction) -> np.ndarray:
    return np.array([model.images[image_id].projection_center() for image_id in sorted(model.reg_image_ids())])


def observations(model: pycolmap.Reconstruction) -> set[tuple[int, int]]:
    return {(element.image_id, element.point2D_idx) for point in model.points3D.values()
            for element in point.track.elements}


@pytest.mark.parametrize("first_cauchy_px", [None, 1.0])
def test_rounds_of_adjustment_leave_no_trace_of_the_observations_they_filter(first_cauchy_px):
    """The first adjustment is pulled by the outliers (least squares) or not (Cauchy); once the filter has removed
    them, the last round, least squares, must give what a least-squares adjustment of the observations it kept
    gives: poses no removed observation pulled (entry-P10's 10.6 mm median position error came from stopping
    after the first round)."""
    model, planted = noisy_model_with_outliers()
    before = observations(model)

    removed = adjust_and_filter(model, 4.0, 1.5, HELD, first_cauchy_px=first_cauchy_px)

    kept = observations(model)
    assert removed == len(before - kept) and set(planted) <= before - kept
    assert len(before - kept) <= 1.2 * len(planted)  # the filter took the planted outliers, not the good ones
    clean = noisy_model_with_outliers()[0]
    for image_id, point2D_idx in sorted(before - kept):
        if clean.images[image_id].points2D[point2D_idx].has_point3D():
            clean.delete_observation(image_id, point2D_idx)
    assert observations(clean) == kept
    bundle_adjust(clean, HELD)
    extent = np.ptp(centres(clean), axis=0).max()
    np.testing.assert_allclose(centres(model), centres(clean), atol=1e-5 * extent)
    assert model.compute_mean_reprojection_error() == pytest.approx(clean.compute_mean_reprojection_error(), rel=1e-3)


def test_one_round_when_nothing_is_filtered():
    model, _ = noisy_model_with_outliers(outlier_px=0.0)
    observations = model.compute_num_observations()
    assert adjust_and_filter(model, 4.0, 1.5, HELD) == 0
    assert model.compute_num_observations() == observations
