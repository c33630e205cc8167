"""Dense reconstruction through pycolmap: undistortion, PatchMatch stereo, stereo fusion, optional Poisson mesh.

PatchMatch stereo needs a pycolmap built with CUDA; the PyPI wheels for Linux have none. ``cuda_problem`` says
so up front, so that a command can warn before any work and keep its sparse result.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pycolmap


def cuda_problem() -> str | None:
    """None when dense reconstruction can run here, otherwise one line saying why not and what to install."""
    if getattr(pycolmap, "has_cuda", False):
        return None
    return (f"dense reconstruction needs pycolmap with CUDA, and this pycolmap {pycolmap.__version__} has none "
            "(PyPI's Linux wheels are CPU-only): build pycolmap from COLMAP's sources with CUDA on a machine with "
            "an NVIDIA GPU to get it; the sparse model is kept")


def run_dense(sparse_model: str | os.PathLike, image_dir: str | os.PathLike, dense_dir: str | os.PathLike,
              max_image_size: int = 2000, mesh: bool = False) -> dict:
    """Undistort, PatchMatch, fuse (and mesh); returns {'dense_points': N, 'fused': path[, 'mesh': path]}."""
    dense_dir = Path(dense_dir)
    scratch = dense_dir.with_name(dense_dir.name + ".part")
    shutil.rmtree(scratch, ignore_errors=True)
    options = pycolmap.UndistortCameraOptions()
    options.max_image_size = max_image_size
    pycolmap.undistort_images(scratch, sparse_model, image_dir, undistort_options=options)
    pycolmap.patch_match_stereo(scratch)
    fused = pycolmap.stereo_fusion(scratch / "fused.ply", scratch)
    result = {"dense_points": fused.num_points3D()}
    if mesh:
        pycolmap.poisson_meshing(scratch / "fused.ply", scratch / "meshed-poisson.ply")
    if dense_dir.exists():
        shutil.rmtree(dense_dir)
    os.replace(scratch, dense_dir)
    result["fused"] = str(dense_dir / "fused.ply")
    if mesh:
        result["mesh"] = str(dense_dir / "meshed-poisson.ply")
    return result
