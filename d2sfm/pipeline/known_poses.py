"""Reconstruction at known poses: the scene's verified matches triangulated at the true cameras' poses instead of
mapped, with the database's intrinsics held (``reconstruct --known-poses TRUE_CAMERAS``).

What a benchmark does to build a reference model in the truth's frame (as ``localize aachen`` does from the
protocol's NVM poses), and what a user with surveyed or GNSS/INS poses wants: the 3D points in their frame, no
drift. Images the truth has no pose for are left out of the model (said once).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pycolmap

from d2sfm.errors import D2sfmError
from d2sfm.evaluation.ground_truth import read_truth
from d2sfm.io.atomic import replace_folder, scratch_folder
from d2sfm.localization.poses import pose_from_rotation_centre
from d2sfm.localization.reference_model import Intrinsics, build_reference_model
from d2sfm.sfm.mapping import MAPPED_FROM
from d2sfm.sfm.triangulation import triangulate_fixed

log = logging.getLogger("d2sfm")


def triangulate_at_known_poses(database_path: str | os.PathLike, image_dir: str | os.PathLike,
                               output_dir: str | os.PathLike, truth_path: str | os.PathLike,
                               mapped_from: dict | None = None) -> list[pycolmap.Reconstruction]:
    """The one model (``output_dir/0``, with ``mapped_from`` beside it as run_mapping writes it) of the database's
    images at the true poses; the folder appears only once complete."""
    truth = read_truth(truth_path)
    with pycolmap.Database.open(database_path) as database:
        cameras = {camera.camera_id: camera for camera in database.read_all_cameras()}
        images = {image.name: image for image in database.read_all_images()}
    posed = sorted(set(images) & set(truth))
    if len(posed) < 2:
        raise D2sfmError(f"{truth_path}: poses for {len(posed)} of the {len(images)} photos; triangulation at known "
                         "poses needs two or more (the truth's image names must be the photos' names)")
    if len(posed) < len(images):
        log.info(f"  {len(images) - len(posed)} photo(s) have no known pose and are left out of the model")
    poses = {name: pose_from_rotation_centre(truth[name].rotation, truth[name].centre) for name in posed}
    intrinsics = {}
    for name in posed:
        camera = cameras[images[name].camera_id]
        intrinsics[name] = Intrinsics(camera.model.name, camera.width, camera.height, tuple(camera.params))
    reference = build_reference_model(database_path, poses, intrinsics)
    output_dir = Path(output_dir)
    scratch = scratch_folder(output_dir)
    model = triangulate_fixed(reference, database_path, image_dir, scratch / "0")
    (scratch / MAPPED_FROM).write_text(json.dumps(mapped_from or {}, indent=2))
    replace_folder(scratch, output_dir)
    log.info(f"  {model.num_points3D()} points triangulated at the known poses of {len(posed)} photos")
    return [model]
