"""Angles between rotations and between directions, exact down to small angles.

``acos`` of a cosine cannot tell angles below ~0.1 degree apart once the inputs carry rounding: the cosine of a
rotation matrix read from a file of 6 significant digits (the Strecha cameras) is off by ~1e-6, and
acos(1 - 1e-6) is already 0.08 degree. Scoring exact true poses with it gave errors of up to 0.088 degree and a
relative-pose AUC@1 of 0.948 instead of 1, and no pose could meet a 0.1-degree threshold. The angle from atan2 of
the sine and cosine parts keeps its precision at every size.
"""

from __future__ import annotations

import math

import numpy as np


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """The angle of a rotation matrix (e.g. R_estimate R_truth^T), in degrees."""
    rotation = np.asarray(rotation, dtype=np.float64)
    cosine = (np.trace(rotation) - 1.0) / 2.0
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    sine = np.linalg.norm(axis) / 2.0
    return math.degrees(math.atan2(float(sine), float(cosine)))


def direction_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two vectors in degrees; 180 when either is zero (no direction to compare)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not np.any(a) or not np.any(b):
        return 180.0
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b))))


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The rotation closest to a nearly orthonormal matrix (a rotation written with few digits), by SVD."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return rotation
