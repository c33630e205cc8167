"""Sparse reconstruction with pycolmap (incremental by default, global as an option) and the ETH local-feature
benchmark's statistics of the result (D2-Net paper, Table 3)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError

MAPPERS = ("incremental", "global")
# Registration of a new image needs this many 2D-3D inliers and this inlier ratio. COLMAP's defaults (30, 0.25)
# suit SIFT; D2 features give fewer, less precisely placed matches per pair (Sacre Coeur: a median of ~120 inliers
# per verified pair multi-scale against ~145 for SIFT, ~55 single-scale), and with COLMAP's values the mapper
# leaves images out or splits the scene depending on the random seed (docs/benchmarks.md, "SfM on real photos").
D2_ABS_POSE_MIN_INLIERS = 15
D2_ABS_POSE_MIN_INLIER_RATIO = 0.1


def run_mapping(database_path: str | os.PathLike, image_dir: str | os.PathLike, output_dir: str | os.PathLike,
                mapper: str = "incremental", min_model_size: int = 3, seed: int = 0,
                text: bool = False, progress: bool = True, abs_pose_min_inliers: int = D2_ABS_POSE_MIN_INLIERS,
                abs_pose_min_inlier_ratio: float = D2_ABS_POSE_MIN_INLIER_RATIO) -> list[pycolmap.Reconstruction]:
    """Map, then write the models as ``output_dir/0``, ``1``, ... largest first (binary, or text with
    ``text``). The folder appears only once everything is written, so a half-written model never exists."""
    output_dir = Path(output_dir)
    scratch = output_dir.with_name(output_dir.name + ".part")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.min_model_size = min_model_size
        options.random_seed = seed
        options.mapper.abs_pose_min_num_inliers = abs_pose_min_inliers
        options.mapper.abs_pose_min_inlier_ratio = abs_pose_min_inlier_ratio
        with pycolmap.Database.open(database_path) as database:
            total = database.num_images()
        with tqdm(total=total, desc="mapping (images registered)", unit="img", disable=not progress) as bar:
            models = pycolmap.incremental_mapping(
                database_path, image_dir, scratch / "raw", options,
                initial_image_pair_callback=lambda: bar.update(2), next_image_callback=lambda: bar.update(1),
            )
    elif mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        if hasattr(options, "random_seed"):
            options.random_seed = seed
        models = pycolmap.global_mapping(database_path, image_dir, scratch / "raw", options)
    else:
        raise D2sfmError(f"mapper {mapper!r} is unknown; use one of {', '.join(MAPPERS)}")
    shutil.rmtree(scratch / "raw", ignore_errors=True)
    ordered = sorted(models.values(), key=lambda model: model.num_reg_images(), reverse=True)
    for index, model in enumerate(ordered):
        folder = scratch / str(index)
        folder.mkdir()
        model.write_text(folder) if text else model.write_binary(folder)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(scratch, output_dir)
    return ordered


def read_models(sparse_dir: str | os.PathLike) -> list[pycolmap.Reconstruction]:
    folders = [p for p in Path(sparse_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    folders.sort(key=lambda p: int(p.name))
    return [pycolmap.Reconstruction(folder) for folder in folders]


def model_statistics(model: pycolmap.Reconstruction) -> dict:
    """The ETH local-feature benchmark's SfM columns."""
    return {
        "registered_images": model.num_reg_images(),
        "points3D": model.num_points3D(),
        "observations": model.compute_num_observations(),
        "mean_track_length": model.compute_mean_track_length(),
        "mean_reprojection_error": model.compute_mean_reprojection_error(),
    }
