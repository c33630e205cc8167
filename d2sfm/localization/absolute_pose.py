"""A camera's pose from 2D-3D correspondences: pycolmap's LO-RANSAC P3P and refinement, at fixed intrinsics or
with the focal length estimated (a query whose calibration is unknown)."""

from __future__ import annotations

import numpy as np
import pycolmap

from d2sfm.localization.poses import Pose, pose_from_rigid3d

# pycolmap's default (-1) continues one random stream per thread: a query's pose then depended on how many RANSAC
# runs came before it in the process (a Python session localizing twice got other poses the second time). Each
# query starts from this seed instead, so the same correspondences give the same pose in any run.
RANSAC_SEED = 0


def estimate_pose(points2D: np.ndarray, points3D: np.ndarray, camera: pycolmap.Camera, max_error: float,
                  refine_focal: bool = False) -> tuple[Pose | None, int]:
    """(pose, inliers), or (None, 0) with fewer than 4 correspondences or no pose found. ``camera`` is changed
    in place when ``refine_focal`` is on."""
    if len(points2D) < 4:
        return None, 0
    estimation = pycolmap.AbsolutePoseEstimationOptions()
    estimation.ransac.max_error = max_error
    estimation.ransac.random_seed = RANSAC_SEED
    estimation.estimate_focal_length = refine_focal
    refinement = pycolmap.AbsolutePoseRefinementOptions()
    refinement.refine_focal_length = refine_focal
    refinement.refine_extra_params = False
    result = pycolmap.estimate_and_refine_absolute_pose(np.asarray(points2D, dtype=np.float64),
                                                        np.asarray(points3D, dtype=np.float64), camera, estimation,
                                                        refinement)
    if result is None:
        return None, 0
    return pose_from_rigid3d(result["cam_from_world"]), int(result["num_inliers"])
