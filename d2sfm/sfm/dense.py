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
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import atomic_path, replace_folder, write_text_atomic
from d2sfm.io.model_files import read_model
from d2sfm.io.mvs_maps import images_with_maps, remove_incomplete_maps
from d2sfm.io.ply import count_vertices
from d2sfm.sfm.defaults import DEFAULT_MESH_TRIM  # noqa: F401 (re-exported: where it was first defined)

log = logging.getLogger("d2sfm")

UNDISTORTED_MARKER = "undistorted.json"  # the inputs the workspace was made from
PATCH_MATCH_MARKER = "patch_match.json"  # PatchMatch ran to its end
FUSED = "fused.ply"
MESH = "meshed-poisson.ply"
CUDA_INSTALL = 'pip uninstall -y pycolmap && pip install "pycolmap-cuda12>=4.2.1,<5"'


def cuda_problem() -> str | None:
    """None when PatchMatch can run here, otherwise one line saying why not and what to install."""
    if getattr(pycolmap, "has_cuda", False):
        try:  # a CUDA build with no GPU to use would abort the process inside PatchMatch
            devices = pycolmap.get_num_cuda_devices() if hasattr(pycolmap, "get_num_cuda_devices") else 1
        except RuntimeError:
            devices = 0
        if devices > 0:
            return None
        return ("dense reconstruction needs a CUDA GPU and this pycolmap (built with CUDA) sees none: check "
                "nvidia-smi, the driver (CUDA 12 or newer) and CUDA_VISIBLE_DEVICES; the sparse model is kept")
    return (f"dense reconstruction needs pycolmap with CUDA and this pycolmap {pycolmap.__version__} has none: "
            f"replace it with PyPI's CUDA build ({CUDA_INSTALL}; it brings the CUDA 12 runtime and needs an NVIDIA "
            "GPU with a driver for CUDA 12, see README 'Dense MVS'); the sparse model is kept")


def workspace_path(dense_dir: str | os.PathLike) -> Path:
    """The folder where an unfinished dense reconstruction lives (and is resumed from)."""
    dense_dir = Path(dense_dir)
    return dense_dir.with_name(dense_dir.name + ".part")


def workspace_inputs(sparse_model: Path, image_dir: Path, max_image_size: int) -> dict[str, str]:
    """What a dense workspace is made from, one digest each: the sparse model (cameras, poses and the 3D points
    PatchMatch picks its source images and depth ranges from), the photos (names and sizes, not the folder's path,
    so that a scene folder can be moved or copied to another machine) and the size limit."""
    model = hashlib.sha256()
    for path in sorted(sparse_model.iterdir()):
        if path.is_file():
            model.update(path.name.encode() + path.read_bytes())
    photos = hashlib.sha256()
    for image in sorted(read_model(sparse_model).images.values(), key=lambda image: image.name):
        photo = image_dir / image.name
        photos.update(f"{image.name}|{photo.stat().st_size if photo.is_file() else -1}\n".encode())
    return {"sparse model": model.hexdigest(), "photos": photos.hexdigest(), "image size": str(max_image_size)}


def _check_inputs(folder: Path, inputs: dict[str, str]) -> bool:
    """True when ``folder`` was made from ``inputs``, False when it holds no record; a folder made from other
    inputs is an error, never silently deleted: its PatchMatch maps may have cost hours."""
    marker = folder / UNDISTORTED_MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text()).get("inputs", {})
    differing = [key for key in inputs if recorded.get(key) != inputs[key]]
    if differing:
        raise D2sfmError(f"{folder} was made from another {' and '.join(differing)} than this run's; delete it to "
                         "compute it again from the current ones (or pass --overwrite)")
    return True


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _run_pycolmap(step: str, workspace: Path, call: Callable[[pycolmap.CancellationToken], object],
                  on_poll: Callable[[], None] | None = None):
    """Run a long pycolmap call in a thread so that Ctrl-C cancels it cleanly (the C++ call holds no GIL and would
    otherwise only see the interrupt when done), polling ``on_poll`` meanwhile; its errors become one line."""
    token = pycolmap.CancellationToken()  # (meshing takes none: Ctrl-C waits for it to finish)
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
    except BaseException:  # Ctrl-C, or an error while polling: stop the C++ work before leaving
        token.cancel()
        thread.join()
        raise
    if "error" in outcome:
        raise D2sfmError(f"dense {step} failed in {workspace}: {_first_line(outcome['error'])}; what is finished is "
                         "kept there, rerun the same command to resume") from None
    return outcome.get("value")


def prepare_workspace(sparse_model: Path, image_dir: Path, workspace: Path, max_image_size: int) -> bool:
    """Undistort the registered photos into ``workspace``, unless it already holds them for the same inputs;
    returns True when an earlier run's workspace is reused."""
    inputs = workspace_inputs(sparse_model, image_dir, max_image_size)
    if _check_inputs(workspace, inputs):
        return True
    if workspace.exists():  # no record: undistortion itself was interrupted, before any PatchMatch
        shutil.rmtree(workspace)
    options = pycolmap.UndistortCameraOptions()
    options.max_image_size = max_image_size
    _run_pycolmap("undistortion", workspace, lambda token: pycolmap.undistort_images(
        workspace, sparse_model, image_dir, undistort_options=options, cancellation_token=token))
    write_text_atomic(workspace / UNDISTORTED_MARKER, json.dumps({"inputs": inputs}, indent=2))
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
        log.info(f"  removed {len(removed)} map(s) an interrupted PatchMatch left half-written; they are computed "
                 "again")
    done = images_with_maps(workspace, names)
    finished_marker = workspace / PATCH_MATCH_MARKER
    if len(done) == len(names) or (finished_marker.is_file() and not removed):
        # (COLMAP computes no maps for an image without source images, so "every map" may never happen)
        log.info(f"  PatchMatch: done earlier ({len(done)} of {len(names)} images have maps), skipped")
        return
    problem = cuda_problem()
    if problem:
        raise D2sfmError(problem.replace("the sparse model is kept",
                                         f"the undistorted workspace {workspace} is kept for the rerun"))
    if done:
        log.info(f"  PatchMatch: {len(done)} of {len(names)} images done earlier, computing the rest")
    options = pycolmap.PatchMatchOptions()  # geom_consistency: a photometric pass, then a geometric one
    passes = ("photometric", "geometric")
    bar = tqdm(total=len(names) * len(passes), desc="PatchMatch (maps)", unit="map", disable=not progress)

    def poll() -> None:
        finished = sum(len(images_with_maps(workspace, names, kind)) for kind in passes)
        bar.update(finished - bar.n)

    try:
        _run_pycolmap("PatchMatch", workspace, lambda token: pycolmap.patch_match_stereo(
            workspace, options=options, cancellation_token=token), on_poll=poll)
        poll()
        write_text_atomic(finished_marker, json.dumps({"images_with_maps": len(images_with_maps(workspace, names))}))
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
    finished = (dense_dir / FUSED).is_file() and _check_inputs(
        dense_dir, workspace_inputs(sparse_model, image_dir, max_image_size))
    if not finished:
        workspace = workspace_path(dense_dir)
        if prepare_workspace(sparse_model, image_dir, workspace, max_image_size):
            log.info(f"  resuming the dense workspace {workspace}")
        patch_match(workspace, progress)
        fuse(workspace)
        replace_folder(workspace, dense_dir)
    result = {"dense_points": count_vertices(dense_dir / FUSED), "fused": str(dense_dir / FUSED)}
    if mesh:
        if not (dense_dir / MESH).is_file():
            poisson_mesh(dense_dir / FUSED, dense_dir / MESH, mesh_trim)
        result["mesh"] = str(dense_dir / MESH)
    return result
