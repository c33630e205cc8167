"""A picture of a COLMAP model, drawn with OpenCV alone so that every reconstruction can write one: the sparse
points in their colours and the camera frusta, seen from behind and above the cameras down their mean viewing
direction, beside the match graph (images as nodes on a circle, verified inliers, or shared 3D points, as edges).

Orthographic projection: no point can fall behind the virtual camera, and the framing only has to fit a box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from scipy.spatial import cKDTree

from d2sfm.errors import D2sfmError
from d2sfm.viz.drawing import write_png

ELEVATION_DEG = 15.0  # how far the virtual view looks down from the cameras' mean viewing direction
FRAMED_SHARE = (1.0, 99.0)  # percentiles of the points kept in the frame (far outliers would shrink the scene)
NEAR_CAMERAS = 2.0  # cameras within this many half-diagonals of the points' box are framed too
MAX_LABELLED_NODES = 40
BACKGROUND = (255, 255, 255)


@dataclass
class ModelArrays:
    """What the picture needs from a model, as arrays."""

    points: np.ndarray  # (P, 3) world
    colours: np.ndarray  # (P, 3) RGB uint8
    centres: np.ndarray  # (I, 3) camera centres
    rotations: np.ndarray  # (I, 3, 3) camera-from-world
    frustum_corners: np.ndarray  # (I, 4, 3) normalised image-plane corners (z = 1), in camera coordinates
    names: list[str]


def frustum_corners(camera: pycolmap.Camera) -> np.ndarray:
    """(4, 3) image corners on the z = 1 plane of the camera, by its pinhole part alone (undistorting a far corner
    through a radial model can fail and give NaN)."""
    pixels = np.array([[0, 0, 1], [camera.width, 0, 1], [camera.width, camera.height, 1], [0, camera.height, 1]], float)
    return pixels @ np.linalg.inv(camera.calibration_matrix()).T


def model_arrays(model: pycolmap.Reconstruction) -> ModelArrays:
    points = np.array([p.xyz for p in model.points3D.values()], np.float64).reshape(-1, 3)
    colours = np.array([p.color for p in model.points3D.values()], np.uint8).reshape(-1, 3)
    images = sorted((image for image in model.images.values() if image.has_pose), key=lambda image: image.name)
    centres, rotations, corners = [], [], []
    for image in images:
        camera = model.cameras[image.camera_id]
        corners.append(frustum_corners(camera))
        rotations.append(image.cam_from_world().rotation.matrix())
        centres.append(image.projection_center())
    return ModelArrays(points, colours, np.array(centres).reshape(-1, 3), np.array(rotations).reshape(-1, 3, 3),
                       np.array(corners).reshape(-1, 4, 3), [image.name for image in images])


def viewing_frame(rotations: np.ndarray, elevation_deg: float = ELEVATION_DEG) -> np.ndarray:
    """Rows (right, down, forward) of a virtual view looking down the cameras' mean viewing direction, tilted
    down by ``elevation_deg`` so that the scene's depth shows; 'up' is the cameras' mean up direction."""
    if len(rotations) == 0:
        return np.eye(3)
    forward = rotations[:, 2, :].mean(0)  # camera z axis in world coordinates, averaged
    up = -rotations[:, 1, :].mean(0)  # COLMAP's image y axis points down
    forward = forward / (np.linalg.norm(forward) or 1.0)
    up = up - forward * (up @ forward)
    if np.linalg.norm(up) < 1e-6:  # cameras all rolled differently: any perpendicular will do
        up = np.cross(forward, [1.0, 0, 0]) if abs(forward[0]) < 0.9 else np.cross(forward, [0, 1.0, 0])
    up = up / np.linalg.norm(up)
    angle = np.radians(elevation_deg)
    forward, up = forward * np.cos(angle) - up * np.sin(angle), up * np.cos(angle) + forward * np.sin(angle)
    down = -up
    right = np.cross(down, forward)
    return np.stack([right, down, forward])


def frustum_size(centres: np.ndarray, extent: float) -> float:
    """Frusta as deep as a fraction of the scene, smaller when cameras crowd together."""
    if len(centres) < 2:
        return 0.08 * extent
    nearest, _ = cKDTree(centres).query(centres, k=2)
    return float(min(0.08 * extent, max(1.5 * np.median(nearest[:, 1]), 0.01 * extent)))


def draw_model(arrays: ModelArrays, size: tuple[int, int] = (1000, 750), margin: int = 30) -> tuple[np.ndarray, int]:
    """The 3D view: points (nearest on top) and the frusta in red, fitted to ``size`` (width, height). A camera
    far from the points (a wrongly registered one) would shrink the scene to a dot: such cameras are left outside
    the frame and counted (the second value)."""
    width, height = size
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    frame = viewing_frame(arrays.rotations)
    points2d = arrays.points @ frame[:2].T
    centres2d = arrays.centres @ frame[:2].T
    if len(points2d) >= 20:  # frame the bulk of the points, and the cameras near them
        low, high = np.percentile(points2d, FRAMED_SHARE, axis=0)
        centre, reach = (low + high) / 2, NEAR_CAMERAS * float(np.linalg.norm(high - low)) / 2
        near = np.linalg.norm(centres2d - centre, axis=1) <= max(reach, 1e-9)
    else:
        box = np.concatenate([points2d, centres2d]) if len(points2d) + len(centres2d) else np.zeros((1, 2))
        low, high = box.min(0), box.max(0)
        near = np.ones(len(centres2d), bool)
    if near.any():
        low, high = np.minimum(low, centres2d[near].min(0)), np.maximum(high, centres2d[near].max(0))
    extent = float(max(high - low)) or 1.0
    depth_frustum = frustum_size(arrays.centres, extent)
    corners_world = (np.einsum("ikj,ick->icj", arrays.rotations, arrays.frustum_corners * depth_frustum)
                     + arrays.centres[:, None, :]) if len(arrays.centres) else np.zeros((0, 4, 3))
    corners2d = corners_world @ frame[:2].T
    if near.any():
        low = np.minimum(low, corners2d[near].reshape(-1, 2).min(0))
        high = np.maximum(high, corners2d[near].reshape(-1, 2).max(0))
    scale = min((width - 2 * margin) / max(high[0] - low[0], 1e-9), (height - 2 * margin) / max(high[1] - low[1], 1e-9))
    offset = np.array([width, height]) / 2 - (low + high) / 2 * scale

    def to_pixels(xy: np.ndarray) -> np.ndarray:  # clipped, so that far cameras stay within cv2's coordinates
        return np.clip(xy * scale + offset, -10 * (width + height), 10 * (width + height))

    if len(points2d):
        radius = 2 if len(points2d) < 20_000 else 1 if len(points2d) < 300_000 else 0
        offsets = np.array([(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)])
        order = np.argsort(arrays.points @ frame[2])  # nearest first
        pixels = np.round(to_pixels(points2d[order])).astype(np.int64)
        x = (pixels[:, None, 0] + offsets[None, :, 0]).ravel()  # point-major: a nearer point's splat comes first
        y = (pixels[:, None, 1] + offsets[None, :, 1]).ravel()
        source = np.repeat(order, len(offsets))
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        flat, first = np.unique((y * width + x)[inside], return_index=True)  # first = the nearest point there
        canvas.reshape(-1, 3)[flat] = arrays.colours[source[inside][first]][:, ::-1]
    for centre, corners in zip(to_pixels(centres2d), to_pixels(corners2d)):
        apex = tuple(int(v) for v in np.round(centre * 16))
        ends = [tuple(int(v) for v in np.round(c * 16)) for c in corners]
        for index, end in enumerate(ends):
            cv2.line(canvas, apex, end, (30, 30, 200), 1, cv2.LINE_AA, shift=4)
            cv2.line(canvas, end, ends[(index + 1) % 4], (30, 30, 200), 1, cv2.LINE_AA, shift=4)
    return canvas, int((~near).sum())


def covisibility(model: pycolmap.Reconstruction) -> dict[tuple[str, str], int]:
    """{(image name, image name): 3D points both observe}: the match graph of a model without its database."""
    names = {image_id: image.name for image_id, image in model.images.items()}
    counts: dict[tuple[str, str], int] = {}
    for point in model.points3D.values():
        seen = sorted({names[element.image_id] for element in point.track.elements})
        for index, first in enumerate(seen):
            for second in seen[index + 1:]:
                counts[(first, second)] = counts.get((first, second), 0) + 1
    return counts


def draw_match_graph(names: list[str], edges: dict[tuple[str, str], int], registered: set[str],
                     size: int = 750) -> np.ndarray:
    """Images on a circle (sorted by name; green registered, red not) joined by edges coloured and thickened by
    their weight on a log scale, strongest drawn last; names written when there are few images."""
    canvas = np.full((size, size, 3), BACKGROUND, np.uint8)
    names = sorted(set(names) | {name for pair in edges for name in pair})
    if not names:
        return canvas
    labelled = len(names) <= MAX_LABELLED_NODES
    radius = size * (0.33 if labelled else 0.44)
    angles = 2 * np.pi * np.arange(len(names)) / len(names) - np.pi / 2
    position = {name: (size / 2 + radius * np.cos(a), size / 2 + radius * np.sin(a))
                for name, a in zip(names, angles)}
    weights = np.array(list(edges.values()), float)
    top = np.log1p(weights.max()) if len(weights) else 1.0
    for (first, second), weight in sorted(edges.items(), key=lambda item: item[1]):
        level = np.log1p(weight) / top
        colour = cv2.applyColorMap(np.uint8([[round(255 * level)]]), cv2.COLORMAP_VIRIDIS)[0, 0]
        ends = [tuple(int(round(v * 16)) for v in position[name]) for name in (first, second)]
        thickness = 1 + int(3 * level) if labelled else 1  # hundreds of thick edges would hide each other
        cv2.line(canvas, ends[0], ends[1], tuple(int(c) for c in colour), thickness, cv2.LINE_AA, shift=4)
    node = max(2, min(8, int(size / len(names) / 3)))
    for name, angle in zip(names, angles):
        centre = tuple(int(round(v)) for v in position[name])
        cv2.circle(canvas, centre, node, (60, 170, 60) if name in registered else (40, 40, 220), -1, cv2.LINE_AA)
        if labelled:
            label = Path(name).stem[:16]
            (text_width, text_height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            x = centre[0] + (12 if np.cos(angle) >= 0 else -12 - text_width)
            cv2.putText(canvas, label, (x, centre[1] + text_height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (40, 40, 40), 1, cv2.LINE_AA)
    return canvas


def header(width: int, lines: list[str]) -> np.ndarray:
    strip = np.full((22 * len(lines) + 8, width, 3), BACKGROUND, np.uint8)
    for index, line in enumerate(lines):
        cv2.putText(strip, line, (10, 22 * index + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def model_picture(model: pycolmap.Reconstruction, database_path: str | os.PathLike | None = None,
                  all_names: list[str] | None = None, height: int = 750) -> np.ndarray:
    """The 3D view beside the match graph: verified inliers from ``database_path`` when given, else the 3D points
    the images share in the model; ``all_names`` adds the images that were not registered."""
    from d2sfm.sfm.database import verified_pair_inliers

    arrays = model_arrays(model)
    view, outside = draw_model(arrays, (round(height * 4 / 3), height))
    if database_path is not None and Path(database_path).is_file():
        edges, kind = verified_pair_inliers(database_path), "verified inliers"
    else:
        edges, kind = covisibility(model), "3D points shared"
    names = sorted(set(all_names or []) | {image.name for image in model.images.values()}
                   | {name for pair in edges for name in pair})
    graph = draw_match_graph(names, edges, set(arrays.names), height)
    gap = np.full((height, 8, 3), 230, np.uint8)
    picture = np.concatenate([view, gap, graph], axis=1)
    strongest = max(edges.values(), default=0)
    return np.concatenate([header(picture.shape[1], [
        f"{len(arrays.names)} of {len(names)} images registered, {len(arrays.points)} points, mean track length "
        f"{model.compute_mean_track_length():.2f}, mean reprojection error "
        f"{model.compute_mean_reprojection_error():.2f} px; cameras in red, seen from behind and above"
        + (f" ({outside} far from the points, outside the frame)" if outside else ""),
        f"right: the match graph, {len(edges)} image pairs with {kind} (colour and width: log scale up to "
        f"{strongest}); nodes green when registered, red when not"]), picture])


def write_model_picture(model_dir: Path, output: Path, database: Path | None = None,
                        all_names: Sequence[str] = (), height: int = 750) -> Path:
    """Read a COLMAP model and write its picture (d2sfm.model_picture)."""
    from d2sfm.io.model_files import read_model
    from d2sfm.viz.model_picture import model_picture

    if not ((model_dir / "images.bin").is_file() or (model_dir / "images.txt").is_file()):
        raise D2sfmError(f"{model_dir}: not a COLMAP model (no images.bin or images.txt); give a model folder "
                         "such as SCENE/sparse/0")
    database = database or (model_dir.parent.parent / "database.db")
    picture = model_picture(read_model(model_dir), database if database.is_file() else None,
                            list(all_names), height)
    return write_png(output, picture)
