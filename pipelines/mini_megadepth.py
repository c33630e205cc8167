"""A miniature MegaDepth in the D2-Net preprocessing format, rendered from the synthetic courtyard (known depth
and poses), so that the MegaDepth training path runs and is checked without the real 200 GB dataset.

Layout (as the real one, see datasets/megadepth.md)::

    ROOT/Undistorted_SfM/0000/images/view_XX.png
    ROOT/phoenix/S6/zl548/MegaDepth_v1/0000/dense0/depths/view_XX.h5      ('/depth', 0 = no depth)
    ROOT/scene_info/0000.npz   image_paths, depth_paths, intrinsics (N, 3, 3), poses (N, 4, 4) world-to-camera,
                               overlap_matrix, scale_ratio_matrix, points3D_id_to_2D, points3D_id_to_ndepth
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import h5py
import numpy as np

from d2sfm.synthetic.scene import camera_poses, courtyard, render, render_xyz

SCENE = "0000"


def _project(points: np.ndarray, rotation: np.ndarray, centre: np.ndarray, focal: float, width: int,
             height: int) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP (x, y) and depth of world points in a camera (principal point at the image centre)."""
    camera = (points - centre) @ rotation.T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = camera[:, :2] / camera[:, 2:] * focal + [width / 2, height / 2]
    return xy, camera[:, 2]


def write_mini_megadepth(root: str | os.PathLike, count: int = 4, width: int = 320, height: int = 240,
                         focal: float = 256.0, seed: int = 0) -> Path:
    """Render ``count`` views with depth maps and write the scene's files; returns ROOT/scene_info."""
    root = Path(root)
    planes = courtyard(seed)
    poses = camera_poses(count, seed)
    image_dir = root / "Undistorted_SfM" / SCENE / "images"
    depth_dir = root / "phoenix" / "S6" / "zl548" / "MegaDepth_v1" / SCENE / "dense0" / "depths"
    image_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    intrinsics = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    image_paths, depth_paths, matrices, depths = [], [], [], []
    points = []
    for index, (rotation, centre) in enumerate(poses):
        name = f"view_{index:02d}"
        cv2.imwrite(str(image_dir / f"{name}.png"), render(planes, rotation, centre, width, height, focal))
        xyz = render_xyz(planes, rotation, centre, width, height, focal)
        depth = ((xyz - centre) @ rotation.T)[..., 2]
        depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
        with h5py.File(depth_dir / f"{name}.h5", "w") as handle:
            handle.create_dataset("depth", data=depth)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rotation, -rotation @ centre
        image_paths.append(str((image_dir / f"{name}.png").relative_to(root)))
        depth_paths.append(str((depth_dir / f"{name}.h5").relative_to(root)))
        matrices.append(pose)
        depths.append(depth)
        grid = xyz[8::16, 8::16].reshape(-1, 3)
        points.append(grid[np.isfinite(grid).all(axis=1)])
    points = np.concatenate(points)
    visible = []  # per image: point id -> (x, y), depth
    for (rotation, centre), depth in zip(poses, depths):
        xy, z = _project(points, rotation, centre, focal, width, height)
        inside = (z > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        seen = {}
        for pid in np.nonzero(inside)[0]:
            column, row = int(xy[pid, 0]), int(xy[pid, 1])
            if abs(depth[row, column] - z[pid]) < 0.02 * z[pid]:
                seen[int(pid)] = (xy[pid], float(z[pid]))
        visible.append(seen)
    n = len(poses)
    overlap, scale = np.zeros((n, n)), np.ones((n, n))
    to_2d, to_ndepth = [], []
    for k, seen in enumerate(visible):
        median = np.median([z for _, z in seen.values()])
        to_2d.append({pid: xy for pid, (xy, _) in seen.items()})
        to_ndepth.append({pid: z / median for pid, (_, z) in seen.items()})
    for a in range(n):
        for b in range(n):
            if a != b:
                shared = visible[a].keys() & visible[b].keys()
                overlap[a, b] = len(shared) / max(1, min(len(visible[a]), len(visible[b])))
                ratios = [max(to_ndepth[a][p] / to_ndepth[b][p], to_ndepth[b][p] / to_ndepth[a][p]) for p in shared]
                scale[a, b] = np.median(ratios) if ratios else np.inf
    info = root / "scene_info"
    info.mkdir(exist_ok=True)
    np.savez(info / f"{SCENE}.npz", image_paths=np.array(image_paths, dtype=object),
             depth_paths=np.array(depth_paths, dtype=object), intrinsics=np.stack([intrinsics] * n),
             poses=np.stack(matrices), overlap_matrix=overlap, scale_ratio_matrix=scale,
             points3D_id_to_2D=np.array(to_2d, dtype=object), points3D_id_to_ndepth=np.array(to_ndepth, dtype=object))
    return info
