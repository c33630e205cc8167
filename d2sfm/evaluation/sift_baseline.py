"""COLMAP's own SIFT pipeline through pycolmap (CPU): the classical baseline the benchmarks compare D2 against,
and the source of reference poses for real photos."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pycolmap

from d2sfm.io.atomic import remove_sqlite_side_files
from d2sfm.sfm.cameras import intrinsics_refinement, parse_camera_params
from d2sfm.sfm.database import CAMERA_MODES
from d2sfm.sfm.mapping import COLMAP_MAPPER_OPTIONS, run_mapping


def sift_database(database_path: str | os.PathLike, image_dir: str | os.PathLike, names: Sequence[str],
                  pairs_path: str | os.PathLike | None = None, camera_mode: str = "auto",
                  camera_model: str = "SIMPLE_RADIAL", camera_params: str = "") -> tuple[float, float]:
    """SIFT features, matching (exhaustive, or the pairs listed in ``pairs_path``) and geometric verification into
    a new database; returns the seconds of extraction and of matching with verification. The cameras are made as
    d2sfm's database makes them (:func:`d2sfm.sfm.database.create_database`), known intrinsics included."""
    params = parse_camera_params(camera_model, camera_params)
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    if params:
        reader.camera_params = ",".join(repr(value) for value in params)
    database_path = Path(database_path)
    database_path.unlink(missing_ok=True)
    remove_sqlite_side_files(database_path)  # a killed run's log would be read against the new file
    pycolmap.Database.open(database_path).close()
    start = time.perf_counter()
    pycolmap.extract_features(database_path, image_dir, list(names), camera_mode=CAMERA_MODES[camera_mode],
                              reader_options=reader, device=pycolmap.Device.cpu)
    middle = time.perf_counter()
    if pairs_path is None:
        pycolmap.match_exhaustive(database_path, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_image_pairs(database_path, pairing_options=pycolmap.ImportedPairingOptions(
            match_list_path=str(pairs_path)), device=pycolmap.Device.cpu)
    return middle - start, time.perf_counter() - middle


def sift_reconstruction(image_dir: str | os.PathLike, names: Sequence[str], work_dir: str | os.PathLike,
                        seed: int = 0, pairs_path: str | os.PathLike | None = None,
                        progress: bool = False, camera_mode: str = "auto", camera_model: str = "SIMPLE_RADIAL",
                        camera_params: str = "", refine_intrinsics: str = "colmap") -> list[pycolmap.Reconstruction]:
    """Models of the SIFT pipeline with COLMAP's mapper options, largest first (written to ``work_dir/sparse``);
    the camera arguments as ``d2sfm.reconstruct``'s (MappingConfig)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    sift_database(work_dir / "database.db", image_dir, names, pairs_path, camera_mode, camera_model, camera_params)
    return run_mapping(work_dir / "database.db", image_dir, work_dir / "sparse", seed=seed, progress=progress,
                       intrinsics=intrinsics_refinement(refine_intrinsics), **COLMAP_MAPPER_OPTIONS)
