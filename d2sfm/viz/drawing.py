"""Pictures of keypoints and matches drawn on the photos, written as PNG files atomically.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import atomic_path
from d2sfm.io.keypoints import colmap_xy_to_opencv_xy


def write_png(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Encode and write atomically; returns the path."""
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise D2sfmError(f"{path}: could not encode the picture as PNG")
    with atomic_path(path) as temporary:
        temporary.write_bytes(encoded.tobytes())
    return Path(path)


def _colours(values: np.ndarray) -> np.ndarray:
    """Turbo colours for values in [0, 1] -> (N, 3) BGR uint8."""
    scaled = np.clip(np.round(np.asarray(values, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(scaled.reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)


def _to_pixel(xy: np.ndarray, scale: float, shift: int = 4) -> np.ndarray:
    """COLMAP-convention (x, y) -> fixed-point pixel centres for cv2 (which puts pixel centres at integers)."""
    return np.round(colmap_xy_to_opencv_xy(xy * scale) * (1 << shift)).astype(np.int64)


def draw_keypoints(image_bgr: np.ndarray, keypoints_xy: np.ndarray, scores: np.ndarray | None = None,
                   radius: int | None = None) -> np.ndarray:
    """Keypoints as dots coloured by score rank (blue = weak, red = strong), sized to stay visible."""
    canvas = image_bgr.copy()
    radius = radius or max(2, round(max(image_bgr.shape[:2]) / 320))
    order = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1) if scores is not None and len(scores) else None
    colours = _colours(order) if order is not None else np.tile([[0, 255, 0]], (len(keypoints_xy), 1))
    for (x, y), colour in zip(_to_pixel(keypoints_xy, 1.0), colours):
        cv2.circle(canvas, (int(x), int(y)), radius << 4, tuple(int(c) for c in colour), -1, cv2.LINE_AA, shift=4)
    return canvas


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 matches: np.ndarray, inliers: np.ndarray | None = None, height: int = 480,
                 max_lines: int = 2000, seed: int = 0) -> np.ndarray:
    """Both images side by side at a common height with one line per match (green/red for inliers/outliers
    when ``inliers`` is given, otherwise coloured by vertical position so crossings stand out)."""
    scales = [height / image.shape[0] for image in (image0, image1)]
    resized = [cv2.resize(image, (max(1, round(image.shape[1] * s)), height), interpolation=cv2.INTER_AREA)
               for image, s in zip((image0, image1), scales)]
    gap = 8
    canvas = np.full((height, resized[0].shape[1] + gap + resized[1].shape[1], 3), 255, np.uint8)
    canvas[:, : resized[0].shape[1]] = resized[0]
    offset = resized[0].shape[1] + gap
    canvas[:, offset:] = resized[1]
    matches = np.asarray(matches).reshape(-1, 2)
    if len(matches) > max_lines:
        keep = np.sort(np.random.default_rng(seed).choice(len(matches), max_lines, replace=False))
        matches = matches[keep]
        inliers = inliers[keep] if inliers is not None else None
    points0 = _to_pixel(keypoints0[matches[:, 0]], scales[0])
    points1 = _to_pixel(keypoints1[matches[:, 1]], scales[1]) + np.array([offset << 4, 0])
    if inliers is not None:
        colours = np.where(np.asarray(inliers)[:, None], [[0, 200, 0]], [[0, 0, 230]])
    else:
        colours = _colours(points0[:, 1] / max(height << 4, 1))
    for p0, p1, colour in zip(points0, points1, colours):
        colour = tuple(int(c) for c in colour)
        cv2.line(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, 1, cv2.LINE_AA, shift=4)
        for point in (p0, p1):
            cv2.circle(canvas, tuple(int(v) for v in point), 2 << 4, colour, -1, cv2.LINE_AA, shift=4)
    return canvas
