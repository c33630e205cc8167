"""The one place where keypoint coordinate conventions are converted.

* D2-Net's network convention (``lib/pyramid.py``): rows ``i`` and columns ``j`` of the image the network saw,
  pixel centres at integers.
* COLMAP's convention (stored in features.h5 and the database): ``x`` right, ``y`` down, the top-left pixel's centre
  at (0.5, 0.5), at the original image resolution.

A pixel of the resized image covers ``[j, j+1) * factor`` of the original, so its centre maps to
``(j + 0.5) * factor`` in COLMAP's convention; scaling the centre-at-integer coordinate (as the original
``extract_features.py`` does) would shift points by half a pixel times ``factor - 1``.
"""

from __future__ import annotations

import numpy as np


def network_ij_to_colmap_xy(ij: np.ndarray, factor_i: float = 1.0, factor_j: float = 1.0) -> np.ndarray:
    """(N, 2) network (i, j) at the network resolution -> (N, 2) COLMAP (x, y) at the original resolution.

    ``factor_*`` = original size / network input size along that axis.
    """
    ij = np.asarray(ij, dtype=np.float64)
    x = (ij[:, 1] + 0.5) * factor_j
    y = (ij[:, 0] + 0.5) * factor_i
    return np.stack([x, y], axis=1)


def colmap_xy_to_network_ij(xy: np.ndarray, factor_i: float = 1.0, factor_j: float = 1.0) -> np.ndarray:
    """Inverse of :func:`network_ij_to_colmap_xy`."""
    xy = np.asarray(xy, dtype=np.float64)
    i = xy[:, 1] / factor_i - 0.5
    j = xy[:, 0] / factor_j - 0.5
    return np.stack([i, j], axis=1)


def rescale_colmap_xy(xy: np.ndarray, factor_x: float = 1.0, factor_y: float = 1.0) -> np.ndarray:
    """COLMAP (x, y) on a resized image -> the same points at the original resolution (``factor_*`` = original
    size / resized size): with the top-left corner at 0, COLMAP coordinates scale as they are."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy * np.array([factor_x, factor_y])


def colmap_xy_to_pixel_index(xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixels containing COLMAP points: pixel (r, c) covers x in [c, c+1), y in [r, r+1).
    Points on the far border are clipped into the image."""
    xy = np.asarray(xy, dtype=np.float64)
    columns = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, height - 1)
    return rows, columns


PIXEL_CENTRE = 0.5  # where COLMAP puts the top-left pixel's centre; every other convention here puts it at 0


def to_integer_centres(xy):
    """COLMAP coordinates -> the same points with pixel centres at integers (OpenCV's, the network's i/j, a pixel
    grid's indices), for numpy arrays and torch tensors alike (dtype and device kept)."""
    return xy - PIXEL_CENTRE


def from_integer_centres(xy):
    """Inverse of :func:`to_integer_centres` (e.g. pixel indices -> the COLMAP coordinates of their centres)."""
    return xy + PIXEL_CENTRE


def colmap_xy_to_opencv_xy(xy: np.ndarray) -> np.ndarray:
    """COLMAP (x, y) -> OpenCV's convention (pixel centres at integers; also HPatches' homographies and
    ``cv2.warpPerspective``), same resolution."""
    return to_integer_centres(np.asarray(xy, dtype=np.float64))


def opencv_xy_to_colmap_xy(xy: np.ndarray) -> np.ndarray:
    """Inverse of :func:`colmap_xy_to_opencv_xy` (e.g. OpenCV SIFT keypoints into features.h5)."""
    return from_integer_centres(np.asarray(xy, dtype=np.float64))


def feature_map_to_image_ij(positions, scaling_steps: int):
    """Feature-map (i, j) -> image (i, j), pixel centres at integers, through ``scaling_steps`` stride-2 stages:
    cell p of a stride-2 stage covers input pixels 2p and 2p + 1, centre 2p + 0.5 (``lib/utils.py``,
    ``upscale_positions``; the training network has 3 stages, stride 8). Works on numpy arrays and tensors."""
    for _ in range(scaling_steps):
        positions = positions * 2 + 0.5
    return positions


def image_to_feature_map_ij(positions, scaling_steps: int):
    """Inverse of :func:`feature_map_to_image_ij` (``downscale_positions``)."""
    for _ in range(scaling_steps):
        positions = (positions - 0.5) / 2
    return positions


# The original maps feature cell k to pixel 4k + 1.5 (two 2x2 poolings). The test-time network's 2x2 average
# pooling with stride 1 (in place of pool3) moves every cell half a stride-4 cell further: its true centre is
# 4k + 3.5. Ignoring it shifts keypoints by 2 px at each pyramid level's resolution, i.e. 4, 2 and 1 px at scales
# 0.5, 1 and 2, so multi-scale tracks mix inconsistent positions. ``geometric_centres`` corrects it.
AVG_POOL_SHIFT = 2.0
SCALING_STEPS = 2  # stride-2 stages between the test-time feature map and its input (output stride 4)


def level_cell_to_image_ij(position, geometric_centres: bool = False):
    """D2 test-time feature-map (i, j) -> (i, j) in the image of its pyramid level (the original's
    ``upscale_positions``; with ``geometric_centres`` the cells' true centres, see above)."""
    position = feature_map_to_image_ij(position, SCALING_STEPS)
    return position + AVG_POOL_SHIFT if geometric_centres else position


def image_ij_to_level_cell(position, geometric_centres: bool = False):
    """Inverse of :func:`level_cell_to_image_ij`."""
    if geometric_centres:
        position = position - AVG_POOL_SHIFT
    return image_to_feature_map_ij(position, SCALING_STEPS)
