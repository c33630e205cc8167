"""Random plane homographies and their use on points and images, for synthesised benchmarks and training pairs.

Homographies act on OpenCV's pixel convention (pixel centres at integers), as ``cv2.warpPerspective`` and the
HPatches ground truth do; convert COLMAP keypoints with :mod:`d2sfm.keypoints` first.
"""

from __future__ import annotations

import cv2
import numpy as np


def random_homography(rng: np.random.Generator, width: int, height: int, strength: float = 1.0,
                      max_rotation_deg: float = 25.0, max_log_scale: float = 0.35, max_perspective: float = 0.15,
                      max_translation: float = 0.08) -> np.ndarray:
    """A viewpoint-like change that keeps most of the image in frame: rotation, zoom, independent jitter of the four
    corners (perspective) and a shift, each drawn uniformly up to ``strength`` times its maximum (fractions of the
    shorter side). ``strength`` 0 gives the identity."""
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    angle = np.deg2rad(rng.uniform(-1, 1) * max_rotation_deg * strength)
    scale = np.exp(rng.uniform(-1, 1) * max_log_scale * strength)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    side = min(width, height)
    moved = (corners - centre) @ rotation.T * scale + centre
    moved += rng.uniform(-1, 1, (4, 2)) * max_perspective * strength * side
    moved += rng.uniform(-1, 1, 2) * max_translation * strength * side
    return cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32)).astype(np.float64)


def warp_points(homography: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (N, 2) points under ``homography`` (same convention in and out)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    projected = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ np.asarray(homography, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return projected[:, :2] / projected[:, 2:]


def warp_image(image: np.ndarray, homography: np.ndarray, width: int | None = None,
               height: int | None = None) -> np.ndarray:
    """The image as seen after ``homography`` (bilinear, black outside), by default at the input size."""
    size = (width or image.shape[1], height or image.shape[0])
    return cv2.warpPerspective(image, homography, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def visible_fraction(homography: np.ndarray, width: int, height: int, samples: int = 32) -> float:
    """Share of the source image that lands inside a target image of the same size (grid estimate)."""
    xs, ys = np.meshgrid(np.linspace(0, width - 1, samples), np.linspace(0, height - 1, samples))
    warped = warp_points(homography, np.stack([xs.ravel(), ys.ravel()], axis=1))
    inside = (warped[:, 0] >= 0) & (warped[:, 0] <= width - 1) & (warped[:, 1] >= 0) & (warped[:, 1] <= height - 1)
    return float(inside.mean())
