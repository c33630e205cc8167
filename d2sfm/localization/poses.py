"""Camera poses as the localization benchmarks exchange them, and their errors against a ground truth.

A pose file has one ``name qw qx qy qz tx ty tz`` per line: the world-to-camera rotation as a unit quaternion
(scalar first) and translation, as COLMAP stores them and as visuallocalization.net expects submissions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import read_text_file, write_text_atomic
from d2sfm.sfm.angles import rotation_angle_deg


@dataclass(frozen=True)
class Pose:
    """World-to-camera: x_cam = R(qvec) @ x_world + tvec."""

    qvec: np.ndarray  # (4,) w, x, y, z
    tvec: np.ndarray  # (3,)

    @property
    def rotation(self) -> np.ndarray:
        return quaternion_to_rotation(self.qvec)

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in world coordinates, -R^T t."""
        return -self.rotation.T @ self.tvec

    @classmethod
    def from_centre(cls, qvec: np.ndarray, centre: np.ndarray) -> Pose:
        """From a rotation and a camera centre (the NVM convention): t = -R c."""
        qvec = np.asarray(qvec, dtype=np.float64)
        return cls(qvec, -quaternion_to_rotation(qvec) @ np.asarray(centre, dtype=np.float64))


def pose_from_rotation_centre(rotation: np.ndarray, centre: np.ndarray) -> Pose:
    """From a camera-from-world rotation matrix and the camera centre (how ground truths often give cameras)."""
    import pycolmap

    rotation, centre = np.asarray(rotation, dtype=np.float64), np.asarray(centre, dtype=np.float64)
    return pose_from_rigid3d(pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre))


def quaternion_to_rotation(qvec: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def read_poses(path: str | os.PathLike, required: bool = False) -> dict[str, Pose]:
    """Parse a pose file; a malformed line is an error naming the file and line, and so is a ``required`` file
    (ground truth) that holds no pose."""
    path = Path(path)
    if not path.is_file():
        raise D2sfmError(f"{path}: no such pose file; expected one 'name qw qx qy qz tx ty tz' per line")
    poses = {}
    for number, line in enumerate(read_text_file(path, "pose file").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 8:
                raise ValueError
            values = np.array([float(v) for v in fields[1:]])
        except ValueError:
            raise D2sfmError(f"{path}:{number}: expected 'name qw qx qy qz tx ty tz', got {line.strip()!r}") from None
        poses[fields[0]] = Pose(values[:4], values[4:])
    if required and not poses:
        raise D2sfmError(f"{path}: holds no poses; expected one 'name qw qx qy qz tx ty tz' per line")
    return poses


def format_pose_line(name: str, pose: Pose) -> str:
    return " ".join([name, *(f"{v:.17g}" for v in pose.qvec), *(f"{v:.17g}" for v in pose.tvec)])


def write_poses(path: str | os.PathLike, poses: Iterable[tuple[str, Pose]]) -> None:
    write_text_atomic(path, "".join(format_pose_line(name, pose) + "\n" for name, pose in poses))


def pose_errors(truth: Pose, estimate: Pose) -> tuple[float, float]:
    """(position error in the world's units, rotation error in degrees) as the benchmark computes them:
    the distance between camera centres and the angle of R_truth^T R_estimate."""
    position = float(np.linalg.norm(truth.centre - estimate.centre))
    return position, rotation_angle_deg(truth.rotation.T @ estimate.rotation)


def pose_from_rigid3d(world_to_camera) -> Pose:
    """A pycolmap ``Rigid3d`` (its quaternion is stored x, y, z, w) as a Pose."""
    x, y, z, w = world_to_camera.rotation.quat
    return Pose(np.array([w, x, y, z], dtype=np.float64), np.asarray(world_to_camera.translation, dtype=np.float64))


def pose_to_rigid3d(pose: Pose):
    import pycolmap

    return pycolmap.Rigid3d(pycolmap.Rotation3d(pose.rotation), pose.tvec)
