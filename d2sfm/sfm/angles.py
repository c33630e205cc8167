"""Angles between rotations and between directions, exact down to small angles.

``acos`` of a cosine cannot tell angles below ~0.1 degree apart once the inputs carry rounding: the cosine of a
rotation matrix read from a file of 6 significant digits (the Strecha cameras) is off by ~1e-6, and
acos(1 - 1e-6) is already 0.08 degree. Scoring exact true poses with it gave errors of up to 0.088 degree and a
relative-pose AUC@1 of 0.948 instead of 1, and no pose could meet a 0.1-degree threshold. Angles from atan2 (of a
quaternion's parts, of a cross and a dot product) keep their precision at every size.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.transform import Rotation


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """The angle of a rotation matrix (e.g. R_estimate R_truth^T), in degrees: scipy's, from the quaternion of the
    nearest rotation (2 atan2(|v|, |w|), precise at every size)."""
    return math.degrees(Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).magnitude())


def direction_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two vectors in degrees; 180 when either is zero (no direction to compare)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not np.any(a) or not np.any(b):
        return 180.0
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b))))


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to a nearly orthonormal matrix (a rotation written with few digits)."""
    return Rotation.from_matrix(np.asarray(matrix, dtype=np.float64)).as_matrix()
