"""Dense reconstruction through pycolmap: undistortion, PatchMatch stereo, stereo fusion, optional Poisson mesh.

PatchMatch is the expensive step (minutes per dozen photos on a GPU), so its results are never thrown away: the work
happens in ``dense.part/`` beside ``dense/``, which is renamed into place only when everything is done. A rerun after
a failure or an interrupt reuses the undistorted images (when the sparse model is the same), deletes the maps a
killed PatchMatch left half-written, lets PatchMatch compute only the images still missing (COLMAP skips images whose
maps exist) and skips it entirely when every map is there, so fusion, which needs no CUDA, runs anywhere.

PatchMatch needs a pycolmap built with CUDA. PyPI's ``pycolmap`` has none; ``pycolmap-cuda12`` has (it brings the
CUDA 12 runtime with it and needs an NVIDIA driver for CUDA 12). ``cuda_problem`` says so before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.fileutil import atomic_path, write_text_atomic
from d2sfm.mvs_maps import images_with_maps, remove_incomplete_maps
from d2sfm.ply import count_vertices

UNDISTORTED_MARKER = "undistorted.json"
FUSED = "fused.ply"
MESH = "meshed-poisson.ply"
DEFAULT_MESH_TRIM = 10.0  # COLMAP's: drop the surface where Poisson's sampling density is below this
CUDA_INSTALL = 'pip uninstall -y pycolmap && pip install "pycolmap-cuda12>=4.2,<5"'


def cuda_problem() -> str | None:
    """None when PatchMatch can run here, otherwise one line saying why not and what to install."""
    if getattr(pycolmap, "has_cuda", False):
        return None
    return (f"dense reconstruction needs pycolmap with CUDA and this pycolmap {pycolmap.__version__} has none: "
            f"replace it with PyPI's CUDA build ({CUDA_INSTALL}; it brings the CUDA 12 runtime and needs an NVIDIA "
            "GPU with a driver for CUDA 12, see README 'Dense MVS'); the sparse model is kept")


def workspace_path(dense_dir: str | os.PathLike) -> Path:
    """The folder where an unfinished dense reconstruction lives (and is resumed from)."""
    dense_dir = Path(dense_dir)
    return dense_dir.with_name(dense_dir.name + ".part")


def _model_fingerprint(sparse_model: Path, image_dir: Path, max_image_size: int) -> str:
    """What the undistorted workspace depends on: the cameras and poses (not the 3D points), the photos' folder and
    the size limit. A changed sparse model means the workspace is stale."""
    digest = hashlib.sha256(f"{Path(image_dir).resolve()}|{max_image_size}".encode())
    for path in sorted(sparse_model.iterdir()):
        if path.is_file() and not path.name.startswith("points3D"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _run_pycolmap(step: str, workspace: Path, call: Callable[[pycolmap.CancellationToken], object],
                  on_poll: Callable[[], None] | None = None):
    """Run a long pycolmap call in a thread so that Ctrl-C cancels it cleanly (the C++ call holds no GIL and would
    otherwise only see the interrupt when done), polling ``on_poll`` meanwhile; its errors become one line."""
    token = pycolmap.CancellationToken()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["value"] = call(token)
        except Exception as error:  # re-raised in the calling thread below
            outcome["error"] = error

    thread = threading.Thread(target=work, name=f"pycolmap-{step}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(1.0)
            if on_poll:
                on_poll()
    except KeyboardInterrupt:
        token.cancel()
        thread.join()
        raise
    if "error" in outcome:
        raise D2sfmError(f"dense {step} failed in {workspace}: {_first_line(outcome['error'])}; what is finished is "
                         "kept there, rerun the same command to resume") from None
    return outcome.get("value")


def prepare_workspace(sparse_model: Path, image_dir: Path, workspace: Path, max_image_size: int) -> bool:
    """Undistort the registered photos into ``workspace``, unless it already holds them for this same model;
    returns True when an earlier run's workspace is reused."""
    fingerprint = _model_fingerprint(sparse_model, image_dir, max_image_size)
    marker = workspace / UNDISTORTED_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return True
    if workspace.exists():
        print(f"  {workspace} was made from another sparse model or image size; starting it again")
        shutil.rmtree(workspace)
    options = pycolmap.UndistortCameraOptions()
    options.max_image_size = max_image_size
    _run_pycolmap("undistortion", workspace, lambda token: pycolmap.undistort_images(
        workspace, sparse_model, image_dir, undistort_options=options, cancellation_token=token))
    write_text_atomic(marker, json.dumps({"fingerprint": fingerprint}))
    return False


def workspace_images(workspace: Path) -> list[str]:
    """The images PatchMatch computes maps for and fusion reads, as the undistorter listed them."""
    config = workspace / "stereo" / "fusion.cfg"
    if not config.is_file():
        raise D2sfmError(f"{config}: missing from the dense workspace; delete {workspace} and rerun")
    return [line.strip() for line in config.read_text().splitlines() if line.strip()]


def patch_match(workspace: Path, progress: bool = True) -> None:
    """PatchMatch stereo (photometric, then geometric) for the images whose maps are missing."""
    names = workspace_images(workspace)
    removed = remove_incomplete_maps(workspace)
    if removed:
        print(f"  removed {len(removed)} map(s) an interrupted PatchMatch left half-written; they are computed again")
    done = images_with_maps(workspace, names)
    if len(done) == len(names):
        print(f"  PatchMatch: all {len(names)} images done earlier, skipped")
        return
    problem = cuda_problem()
    if problem:
        raise D2sfmError(problem.replace("the sparse model is kept",
                                         f"the undistorted workspace {workspace} is kept for the rerun"))
    if done:
        print(f"  PatchMatch: {len(done)} of {len(names)} images done earlier, computing the rest")
    options = pycolmap.PatchMatchOptions()
    passes = ("photometric", "geometric") if options.geom_consistency else ("geometric",)
    bar = tqdm(total=len(names) * len(passes), desc="PatchMatch (maps)", unit="map", disable=not progress)

    def poll() -> None:
        finished = sum(len(images_with_maps(workspace, names, kind)) for kind in passes)
        bar.update(finished - bar.n)

    try:
        _run_pycolmap("PatchMatch", workspace, lambda token: pycolmap.patch_match_stereo(
            workspace, options=options, cancellation_token=token), on_poll=poll)
        poll()
    finally:
        bar.close()


def fuse(workspace: Path) -> int:
    """Stereo fusion of the geometric maps into ``workspace/fused.ply``; returns the number of points."""
    fused = workspace / FUSED
    _run_pycolmap("fusion", workspace, lambda token: pycolmap.stereo_fusion(
        fused, workspace, input_type="geometric", output_type="ply", cancellation_token=token))
    count = count_vertices(fused)
    if count == 0:
        raise D2sfmError(f"{fused}: fusion kept no point (the depth maps do not agree between images); check the "
                         "sparse model, or delete the workspace to compute PatchMatch again")
    return count


def poisson_mesh(fused: Path, mesh: Path, trim: float = DEFAULT_MESH_TRIM) -> None:
    """Poisson surface of the fused points, written atomically; an empty result is an error, not a silent file."""
    options = pycolmap.PoissonMeshingOptions()
    options.trim = trim
    with atomic_path(mesh, suffix=".part.ply") as scratch:  # COLMAP insists on the .ply extension
        scratch.unlink()
        _run_pycolmap("meshing", fused.parent, lambda token: pycolmap.poisson_meshing(fused, scratch, options))
        if not scratch.is_file() or count_vertices(scratch) == 0:
            raise D2sfmError(f"{mesh}: Poisson meshing of {fused} ({count_vertices(fused)} points) left no surface "
                             f"after trimming at density {trim:g}; the points are too sparse for it: rerun with a "
                             "lower --mesh-trim (0 keeps everything)")


def run_dense(sparse_model: str | os.PathLike, image_dir: str | os.PathLike, dense_dir: str | os.PathLike,
              max_image_size: int = 2000, mesh: bool = False, mesh_trim: float = DEFAULT_MESH_TRIM,
              progress: bool = True) -> dict:
    """Undistort, PatchMatch, fuse (and mesh), resuming whatever an earlier run finished; returns
    {'dense_points': N, 'fused': path[, 'mesh': path]}."""
    sparse_model, image_dir, dense_dir = Path(sparse_model), Path(image_dir), Path(dense_dir)
    if not (dense_dir / FUSED).is_file():
        workspace = workspace_path(dense_dir)
        if prepare_workspace(sparse_model, image_dir, workspace, max_image_size):
            print(f"  resuming the dense workspace {workspace}")
        patch_match(workspace, progress)
        fuse(workspace)
        if dense_dir.exists():
            shutil.rmtree(dense_dir)
        os.replace(workspace, dense_dir)
    result = {"dense_points": count_vertices(dense_dir / FUSED), "fused": str(dense_dir / FUSED)}
    if mesh:
        if not (dense_dir / MESH).is_file():
            poisson_mesh(dense_dir / FUSED, dense_dir / MESH, mesh_trim)
        result["mesh"] = str(dense_dir / MESH)
    return result
