"""A reference model with known poses and intrinsics, ready for triangulation at fixed cameras.

The localization benchmarks ship their database poses as an NVM file (rotation quaternion and camera *centre* per
image) and their intrinsics as text lines ``name MODEL width height params...``. COLMAP needs the poses as
world-to-camera translations and the image and camera ids of the database it will triangulate from, so the model
is built against that database (the benchmark's ``database.db``, whose ids the submission must keep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import read_text_file
from d2sfm.localization.poses import Pose, pose_to_rigid3d


@dataclass(frozen=True)
class Intrinsics:
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def camera(self, camera_id: int) -> pycolmap.Camera:
        return pycolmap.Camera(model=self.model, width=self.width, height=self.height,
                               params=list(self.params), camera_id=camera_id)


def read_nvm_poses(path: str | os.PathLike) -> dict[str, Pose]:
    """Poses of the cameras section of an NVM_V3 file: ``name focal qw qx qy qz cx cy cz radial 0`` per camera."""
    path = Path(path)
    if not path.is_file():
        raise D2sfmError(f"{path}: no such NVM file")
    lines = iter(read_text_file(path, "NVM file").splitlines())
    header = next(lines, "")
    if not header.startswith("NVM_V3"):
        raise D2sfmError(f"{path}: not an NVM_V3 file (first line {header[:40]!r})")
    count_line = next((line for line in lines if line.strip()), None)
    try:
        count = int(count_line.split()[0])
    except (AttributeError, ValueError, IndexError):
        raise D2sfmError(f"{path}: expected the number of cameras after the NVM_V3 header") from None
    poses = {}
    for _ in range(count):
        fields = next(lines, "").split()
        try:
            qvec = np.array([float(v) for v in fields[2:6]])
            centre = np.array([float(v) for v in fields[6:9]])
            if len(qvec) != 4 or len(centre) != 3:
                raise ValueError
        except ValueError:
            raise D2sfmError(f"{path}: camera line {' '.join(fields)[:80]!r} is not "
                             "'name focal qw qx qy qz cx cy cz radial 0'") from None
        poses[fields[0]] = Pose.from_centre(qvec, centre)
    if len(poses) != count:
        raise D2sfmError(f"{path}: the header announces {count} cameras but the file has {len(poses)}")
    return poses


def read_intrinsics(path: str | os.PathLike) -> dict[str, Intrinsics]:
    """``name MODEL width height params...`` per line (database_intrinsics.txt, *_queries_with_intrinsics.txt)."""
    path = Path(path)
    if not path.is_file():
        raise D2sfmError(f"{path}: no such intrinsics file")
    result = {}
    for number, line in enumerate(read_text_file(path, "intrinsics file").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            model = fields[1]
            params = tuple(float(v) for v in fields[4:])
            if len(params) != _parameter_count(model):
                raise ValueError
            result[fields[0]] = Intrinsics(model, int(fields[2]), int(fields[3]), params)
        except (IndexError, KeyError, ValueError):
            raise D2sfmError(f"{path}:{number}: expected 'name MODEL width height params' with a COLMAP camera "
                             f"model and its parameters, got {line.strip()[:80]!r}") from None
    return result


def _parameter_count(model: str) -> int:
    if model not in pycolmap.CameraModelId.__members__ or model == "INVALID":
        raise KeyError(model)
    return pycolmap.Camera.create_from_model_name(0, model, 1.0, 1, 1).params.size


def build_reference_model(database_path: str | os.PathLike, poses: dict[str, Pose],
                          intrinsics: dict[str, Intrinsics]) -> pycolmap.Reconstruction:
    """A model without points holding every posed image under its database image id and camera id."""
    with pycolmap.Database.open(database_path) as database:
        images = {image.name: image for image in database.read_all_images()}
    missing = sorted(set(poses) - set(images))
    if missing:
        raise D2sfmError(f"{database_path}: {len(missing)} posed images are not in the database "
                         f"(first: {missing[0]}); use the database that belongs to these poses")
    no_intrinsics = sorted(set(poses) - set(intrinsics))
    if no_intrinsics:
        raise D2sfmError(f"{len(no_intrinsics)} posed images have no intrinsics (first: {no_intrinsics[0]})")
    model = pycolmap.Reconstruction()
    for name, pose in poses.items():
        image = images[name]
        if not model.exists_camera(image.camera_id):
            model.add_camera_with_trivial_rig(intrinsics[name].camera(image.camera_id))
        model.add_image_with_trivial_frame(
            pycolmap.Image(name=name, camera_id=image.camera_id, image_id=image.image_id), pose_to_rigid3d(pose))
    return model
