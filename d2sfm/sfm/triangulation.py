"""Triangulation at fixed poses and intrinsics (COLMAP's ``point_triangulator`` with every refinement of the
cameras off), as the localization benchmark builds its database model."""

from __future__ import annotations

import os
from pathlib import Path

import pycolmap

from d2sfm.io.atomic import replace_folder, scratch_folder

TRIANGULATION_SEED = 0


def fixed_camera_options() -> pycolmap.IncrementalPipelineOptions:
    """The benchmark's ``--Mapper.ba_refine_focal_length 0 --Mapper.ba_refine_principal_point 0
    --Mapper.ba_refine_extra_params 0``."""
    options = pycolmap.IncrementalPipelineOptions()
    options.ba_refine_focal_length = False
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    return options


def triangulate_fixed(reference: pycolmap.Reconstruction, database_path: str | os.PathLike,
                      image_dir: str | os.PathLike, output_dir: str | os.PathLike) -> pycolmap.Reconstruction:
    """Triangulate the database's verified matches into ``reference`` (poses and intrinsics kept); the binary
    model appears in ``output_dir`` only once complete."""
    output_dir = Path(output_dir)
    scratch = scratch_folder(output_dir)
    # The triangulator's RANSAC draws from the calling thread's random stream, which pycolmap continues across calls
    # (the options' random_seed is not applied here): without this a process's second triangulation (a Python
    # session's, a test's) came out otherwise than its first.
    pycolmap.set_random_seed(TRIANGULATION_SEED)
    model = pycolmap.triangulate_points(reference, database_path, image_dir, scratch, clear_points=True,
                                        options=fixed_camera_options(), refine_intrinsics=False)
    replace_folder(scratch, output_dir)
    return model
