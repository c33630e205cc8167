"""Refinement of a mapped model: the observations of each 3D point aligned to one reference observation
(optionally, tracks completed in the registered images where the point's patch is found), then bundle adjustment.

Before mapping, refine.py aligns the keypoints of tracks formed by the verified matches; those tracks still hold
wrong matches (merged chains), and a keypoint that could not be aligned keeps its detection error. After mapping
the tracks are the mapper's, cleaned of most wrong matches, and the model gives each point's local geometry: the
projections of its nearest 3D points give the affinity between two views, so every observation can be aligned
to the view that sees the point at the finest scale. An observation that does not align (poor fit, or further
than ``max_shift`` from where it was) leaves its track. With ``complete_tracks``, where a point projects into a
covisible registered image that does not observe it, a good fit there becomes a new observation (a new 2D point
of that image; the database's keypoints are untouched). Bundle adjustment and COLMAP's point filter, in rounds
as COLMAP's mapper runs them, then finish the model.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
import torch
from scipy.spatial import cKDTree
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import recover_folder, replace_folder, scratch_folder
from d2sfm.io.images import gray_image_reader
from d2sfm.io.model_files import read_model
from d2sfm.refinement.patch_alignment import AlignmentSettings, align_keypoints, fit_linear_maps
from d2sfm.refinement.tracks import Tracks
from d2sfm.sfm.cameras import intrinsics_refinement
from d2sfm.sfm.mapping import adjust_and_filter


@dataclass
class ModelRefineSettings:
    # a star is one 3D point, however many views see it: no track size limit. The finest blur level only: the
    # observations start refined and the completions at a bundle-adjusted projection, within its basin (on
    # fountain-P11 the coarse level cost 17% of this stage and changed the poses' errors by under 0.1 mm).
    # max_shift 8 px, as before mapping: an observation the database stage could not align keeps its detection
    # error (where that stage aligns, on the 3072x2048 Strecha photos, it moves keypoints a median 3 px and 10%
    # of them more than 6 px). At 4 px such observations left their tracks: on entry-P10 8 px keeps 16% more
    # observations and the median position error falls from 6.4 to 5.4 mm, and it lowers fountain-P11's too
    # (benchmarks/model_stage_variants.py; docs/benchmarks.md). 100,000 keypoints per chunk: one pass over the
    # images instead of two for a scene of 11 photos (fountain-P11: 1.3 s less), and with one blur level the
    # templates take the 180 MB of the default 50,000 at two levels.
    alignment: AlignmentSettings = field(default_factory=lambda: AlignmentSettings(
        max_shift=8.0, max_track_size=2**31, blur_sigmas=(1.0,), max_nodes=100_000, give_up_after=3))
    neighbours: int = 12  # nearest 3D points whose projections give a point's local affinity between views
    # Track completion: off by default. On the three Strecha scenes with the known K, each refining the same
    # mapped models (three mapper seeds), completing tracks cost 55-70% of this stage and lowered AUC@1 on every
    # scene and seed (fountain-P11 0.9554 -> 0.9499, Herz-Jesus-P8 0.9530 -> 0.9520-0.9527, entry-P10 0.950 ->
    # 0.941), raised the position errors of fountain-P11 (1.80 / 3.23 -> 1.96 / 4.09 mm) and Herz-Jesus-P8 (2.71 /
    # 4.96 -> 3.09 / 5.34 mm), and lowered only entry-P10's median (5.6-6.2 -> 5.2-5.5 mm): a completion starts at
    # the model's own projection under an affinity fitted to the neighbours' projections, which on a non-planar
    # surface is not the patch's (benchmarks/model_stage_variants.py; docs/benchmarks.md).
    complete_tracks: bool = False
    covisible_images: int = 20  # with complete_tracks: per observing image, the most covisible images searched
    margin_px: float = 16.0  # a completion candidate projects at least this far inside its image
    max_points: int = 20_000  # 3D points whose nodes are collected and aligned at once: bounds memory
    max_reprojection_error: float = 4.0  # COLMAP's filter after the bundle adjustment (the mapper's default)
    min_triangulation_angle: float = 1.5
    # the first adjustment with a Cauchy loss of this scale (px; None: least squares throughout): the aligned
    # observations sit within ~0.3 px, and one that aligned to the wrong place must not pull the poses before
    # the filter sees it (sfm.mapping.adjust_and_filter)
    first_cauchy_px: float | None = 1.0
    intrinsics: str = "colmap"  # what the final bundle adjustment may change (d2sfm.sfm.cameras)
    hold_poses: bool = False  # known poses: the final bundle adjustment moves the points only

    def as_dict(self) -> dict:
        return {**{key: value for key, value in asdict(self).items() if key != "alignment"},
                "alignment": self.alignment.as_dict()}


@dataclass
class ModelRefinementSummary:
    registered_images: int
    points_before: int
    points_after: int
    observations_before: int
    observations_after: int
    observations_aligned: int
    observations_dropped: int  # did not align: left their track
    observations_added: int  # completed tracks (complete_tracks)
    track_length_before: float
    track_length_after: float
    reprojection_error_before: float
    reprojection_error_after: float
    seconds: float

    def describe(self) -> str:
        return (f"{self.observations_aligned} observations aligned, {self.observations_dropped} dropped, "
                f"{self.observations_added} added; {self.points_before} -> {self.points_after} points, track "
                f"length {self.track_length_before:.2f} -> {self.track_length_after:.2f}, reprojection error "
                f"{self.reprojection_error_before:.2f} -> {self.reprojection_error_after:.2f} px")


def _project(image: pycolmap.Image, camera: pycolmap.Camera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions (N, 2) (COLMAP convention) of world points (N, 3) and whether each is in front."""
    pose = image.cam_from_world()
    in_camera = xyz @ pose.rotation.matrix().T + pose.translation
    front = in_camera[:, 2] > 1e-6
    pixels = np.full((len(xyz), 2), np.nan)
    if front.any():
        pixels[front] = camera.img_from_cam(in_camera[front])
    return pixels, front


def _covisible(model: pycolmap.Reconstruction, limit: int) -> dict[int, list[int]]:
    """Per registered image, the ``limit`` registered images sharing the most 3D points with it."""
    shared: dict[tuple[int, int], int] = {}
    for point in model.points3D.values():
        images = sorted({element.image_id for element in point.track.elements})
        for i, first in enumerate(images):
            for second in images[i + 1:]:
                shared[(first, second)] = shared.get((first, second), 0) + 1
    ranked: dict[int, list[tuple[int, int]]] = {image_id: [] for image_id in model.reg_image_ids()}
    for (first, second), count in shared.items():
        ranked[first].append((count, second))
        ranked[second].append((count, first))
    return {image_id: [other for _, other in sorted(pairs, reverse=True)[:limit]] for image_id, pairs in ranked.items()}


@dataclass
class _Nodes:
    """Every observation and completion candidate as a node of a star-shaped track per 3D point: arrays (K,)."""

    point_index: np.ndarray
    image_ids: np.ndarray
    keypoint_ids: np.ndarray  # -1 for a completion candidate
    xy: np.ndarray  # (K, 2): the observation, or the point's projection for a candidate
    reference: np.ndarray  # bool: the view the others align to
    maps: np.ndarray  # (K, 2, 2): affinity from the reference's view to the node's


def _observations(model: pycolmap.Reconstruction, point_ids: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """(N, 3) rows (point index, image id, 2D point index) of every observation of the points ``chunk``."""
    rows = [(index, element.image_id, element.point2D_idx) for index in chunk
            for element in model.points3D[int(point_ids[index])].track.elements]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _completion_candidates(observations: np.ndarray, covisible: dict[int, list[int]]) -> np.ndarray:
    """(M, 2) rows (point index, image id): the covisible images of each point's views that do not observe it."""
    pairs = [(point, other) for point, image_id, _ in observations for other in covisible.get(int(image_id), [])]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    candidates = np.unique(np.asarray(pairs, dtype=np.int64), axis=0)
    span = int(max(candidates[:, 1].max(), observations[:, 1].max())) + 1
    seen = np.isin(candidates[:, 0] * span + candidates[:, 1], observations[:, 0] * span + observations[:, 1])
    return candidates[~seen]


def _collect_nodes(model: pycolmap.Reconstruction, chunk: np.ndarray, point_ids: np.ndarray, xyz: np.ndarray,
                   neighbours: np.ndarray, covisible: dict[int, list[int]], settings: ModelRefineSettings) -> _Nodes:
    """The observations and completion candidates of the points ``chunk``, each with the projections of its
    point's neighbourhood (``neighbours``: rows of indices into ``xyz``), which give the reference view (the one
    that sees the neighbourhood largest: the finest scale) and the affinities."""
    observations = _observations(model, point_ids, chunk)
    candidates = _completion_candidates(observations, covisible)  # none without complete_tracks: no covisible
    point_index = np.concatenate([observations[:, 0], candidates[:, 0]])
    image_ids = np.concatenate([observations[:, 1], candidates[:, 1]])
    keypoint_ids = np.concatenate([observations[:, 2], np.full(len(candidates), -1)])
    count = len(point_index)
    pixels = np.full((count, neighbours.shape[1] + 1, 2), np.nan)  # the point, then its neighbours
    xy = np.zeros((count, 2))
    usable = np.zeros(count, bool)
    for image_id in np.unique(image_ids):
        rows = np.flatnonzero(image_ids == image_id)
        image = model.images[int(image_id)]
        camera = model.cameras[image.camera_id]
        where = np.concatenate([point_index[rows, None], neighbours[point_index[rows]]], axis=1)
        projected, front = _project(image, camera, xyz[where.ravel()])
        pixels[rows] = projected.reshape(len(rows), -1, 2)
        keypoints = keypoint_ids[rows]
        observed = keypoints >= 0
        if observed.any():
            points2D = image.points2D
            xy[rows[observed]] = [points2D[int(k)].xy for k in keypoints[observed]]
        inside = np.all((pixels[rows, 0] >= settings.margin_px)
                        & (pixels[rows, 0] <= [camera.width - settings.margin_px,
                                               camera.height - settings.margin_px]), axis=1)
        xy[rows[~observed]] = pixels[rows[~observed], 0]
        usable[rows] = front.reshape(len(rows), -1).all(axis=1) & (observed | inside)
    with warnings.catch_warnings():  # a neighbourhood wholly behind a candidate's camera is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = pixels[:, 1:] - np.nanmean(pixels[:, 1:], axis=1, keepdims=True)
        spread = np.nanmean(np.linalg.norm(centred, axis=2), axis=1)
    spread = np.where(np.isfinite(spread), spread, -1e300)  # observations only can be the reference
    spread[keypoint_ids < 0] = -np.inf
    order = np.lexsort((-spread, point_index))
    first = np.ones(count, bool)
    first[1:] = point_index[order[1:]] != point_index[order[:-1]]
    reference = np.zeros(count, bool)
    reference[order[first]] = True
    reference_of_point = np.full(len(point_ids), -1)
    reference_of_point[point_index[reference]] = np.flatnonzero(reference)
    maps = np.tile(np.eye(2), (count, 1, 1))
    others = ~reference
    maps[others] = fit_linear_maps(pixels[reference_of_point[point_index[others]], 1:], pixels[others, 1:])
    keep = (usable | reference) & np.isfinite(maps).all(axis=(1, 2))
    keep |= reference  # a reference seen from behind (never after mapping) still anchors its observations
    return _Nodes(point_index[keep], image_ids[keep], keypoint_ids[keep], xy[keep], reference[keep], maps[keep])


def refine_model(model: pycolmap.Reconstruction, read_gray: Callable[[int], np.ndarray], device: torch.device,
                 settings: ModelRefineSettings | None = None,
                 progress: bool = False) -> tuple[pycolmap.Reconstruction, ModelRefinementSummary]:
    """A refined copy of ``model`` (trivial rigs: one camera per frame, as d2sfm's mapping makes) and what
    changed. ``read_gray(image_id)`` gives an image as float32 grayscale."""
    settings = settings or ModelRefineSettings()
    started = time.perf_counter()
    if any(rig.num_sensors() > 1 for rig in model.rigs.values()):
        raise D2sfmError("model refinement takes models of single-camera rigs only (as d2sfm maps them); "
                         "refine the database instead (python -m d2sfm.refine DATABASE)")
    before = (model.num_points3D(), model.compute_num_observations(), model.compute_mean_track_length(),
              model.compute_mean_reprojection_error())
    point_ids = np.asarray(sorted(model.points3D), dtype=np.int64)
    xyz = np.asarray([model.points3D[point_id].xyz for point_id in point_ids]).reshape(-1, 3)
    if len(point_ids) < 2:
        raise D2sfmError("the model has fewer than two 3D points: nothing to refine")
    neighbours = cKDTree(xyz).query(xyz, k=min(settings.neighbours, len(xyz)))[1].reshape(len(xyz), -1)
    covisible = _covisible(model, settings.covisible_images) if settings.complete_tracks else {}
    pieces = []
    chunks = np.array_split(np.arange(len(point_ids)), -(-len(point_ids) // settings.max_points))
    for chunk in tqdm(chunks, desc="refining the model (chunks of points)", unit="chunk",
                      disable=not progress or len(chunks) < 2):
        nodes = _collect_nodes(model, chunk, point_ids, xyz, neighbours, covisible, settings)
        node_ids = np.arange(len(nodes.point_index))
        reference_of_point = np.full(len(point_ids), -1)
        reference_of_point[nodes.point_index[nodes.reference]] = node_ids[nodes.reference]
        others = ~nodes.reference
        edges = np.stack([reference_of_point[nodes.point_index[others]], node_ids[others]], axis=1)
        tracks = Tracks(nodes.image_ids, nodes.keypoint_ids, nodes.point_index, edges)
        alignment = align_keypoints(tracks, nodes.xy, nodes.maps[others], nodes.reference, read_gray,
                                    settings.alignment, device, progress and len(chunks) < 2)
        pieces.append((nodes, alignment.positions, alignment.aligned))
    nodes = _Nodes(*(np.concatenate([getattr(piece[0], name) for piece in pieces])
                     for name in ("point_index", "image_ids", "keypoint_ids", "xy", "reference", "maps")))
    aligned = np.concatenate([piece[2] for piece in pieces])
    reference = nodes.reference
    refined = _rebuild(model, point_ids, nodes, np.concatenate([piece[1] for piece in pieces]), aligned | reference)
    adjust_and_filter(refined, settings.max_reprojection_error, settings.min_triangulation_angle,
                      intrinsics_refinement(settings.intrinsics), hold_poses=settings.hold_poses,
                      first_cauchy_px=settings.first_cauchy_px)
    keypoint_ids = nodes.keypoint_ids
    summary = ModelRefinementSummary(
        registered_images=refined.num_reg_images(), points_before=before[0], points_after=refined.num_points3D(),
        observations_before=before[1], observations_after=refined.compute_num_observations(),
        observations_aligned=int((aligned & (keypoint_ids >= 0)).sum()),
        observations_dropped=int((~aligned & ~reference & (keypoint_ids >= 0)).sum()),
        observations_added=int((aligned & (keypoint_ids < 0)).sum()),
        track_length_before=round(before[2], 4), track_length_after=round(refined.compute_mean_track_length(), 4),
        reprojection_error_before=round(before[3], 4),
        reprojection_error_after=round(refined.compute_mean_reprojection_error(), 4),
        seconds=round(time.perf_counter() - started, 2))
    return refined, summary


def _rebuild(model: pycolmap.Reconstruction, point_ids: np.ndarray, nodes: _Nodes, positions: np.ndarray,
             kept: np.ndarray) -> pycolmap.Reconstruction:
    """A new model with the same cameras and poses, each image's 2D points moved where aligned and new ones
    appended for completed tracks, and each point's track made of its kept nodes (points left with fewer than
    two observations are dropped). Built anew because pycolmap cannot append 2D points to an image in place."""
    image_ids = nodes.image_ids
    keypoint_ids = nodes.keypoint_ids.copy()
    keypoints = {image_id: np.asarray([p.xy for p in image.points2D], dtype=np.float64).reshape(-1, 2)
                 for image_id, image in model.images.items()}
    for image_id in np.unique(image_ids):
        own = np.flatnonzero((image_ids == image_id) & kept)
        existing = own[keypoint_ids[own] >= 0]
        keypoints[image_id][keypoint_ids[existing]] = positions[existing]
        added = own[keypoint_ids[own] < 0]
        keypoint_ids[added] = len(keypoints[image_id]) + np.arange(len(added))
        keypoints[image_id] = np.vstack([keypoints[image_id], positions[added]])
    refined = pycolmap.Reconstruction()
    for camera in model.cameras.values():
        refined.add_camera_with_trivial_rig(camera)
    for image_id, image in model.images.items():
        new = pycolmap.Image(name=image.name, keypoints=keypoints[image_id], camera_id=image.camera_id,
                             image_id=image_id)
        if image.has_pose:
            refined.add_image_with_trivial_frame(new, image.cam_from_world())
        else:
            refined.add_image_with_trivial_frame(new)
    point_index = nodes.point_index
    order = np.argsort(point_index, kind="stable")
    starts = np.searchsorted(point_index[order], np.arange(len(point_ids) + 1))
    for index, point_id in enumerate(point_ids):
        members = order[starts[index]:starts[index + 1]]
        members = members[kept[members]]
        if len(np.unique(image_ids[members])) < 2:
            continue
        track = pycolmap.Track()
        for member in members:
            track.add_element(int(image_ids[member]), int(keypoint_ids[member]))
        point = model.points3D[point_id]
        refined.add_point3D(point.xyz, track, point.color)
    return refined


# The refinement's record inside a refined model folder: COLMAP ignores files it does not know, and it is written
# before the refined folder takes the model's place, so a model folder with it is refined and complete.
RECORD_NAME = "d2sfm_refinement.json"


def model_refinement_record(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


REFINED_SUFFIX, UNREFINED_SUFFIX = ".refined.part", ".unrefined"  # beside a model while its refined one swaps in


def recover_interrupted(folder: str | os.PathLike) -> None:
    """Undo what an interrupted :func:`refine_model_folder` left: the model folder is the refined one if the swap
    finished, else the original again."""
    recover_folder(folder, scratch_suffix=REFINED_SUFFIX, backup_suffix=UNREFINED_SUFFIX)


def recover_interrupted_models(sparse_dir: str | os.PathLike) -> None:
    """:func:`recover_interrupted` for every model of a sparse folder (before anything looks for its models)."""
    sparse_dir = Path(sparse_dir)
    if sparse_dir.is_dir():
        for leftover in [*sparse_dir.glob(f"*{UNREFINED_SUFFIX}"), *sparse_dir.glob(f"*{REFINED_SUFFIX}")]:
            recover_interrupted(sparse_dir / leftover.name.split(".")[0])


def refine_model_folder(folder: str | os.PathLike, image_dir: str | os.PathLike, device: torch.device,
                        settings: ModelRefineSettings | None = None, progress: bool = False
                        ) -> ModelRefinementSummary:
    """Refine the COLMAP model in ``folder`` in place (same format, binary or text). The refined model is written
    beside it with its record, then swapped in by two renames; :func:`recover_interrupted` repairs a crash
    between them."""
    settings = settings or ModelRefineSettings()
    folder = Path(folder)
    recover_interrupted(folder)
    model = read_model(folder)
    names = {image_id: image.name for image_id, image in model.images.items()}
    refined, summary = refine_model(model, gray_image_reader(names, Path(image_dir)), device, settings, progress)
    part = scratch_folder(folder, REFINED_SUFFIX)
    if (folder / "cameras.txt").is_file():
        refined.write_text(part)
    else:
        refined.write_binary(part)
    (part / RECORD_NAME).write_text(json.dumps({**asdict(summary), "settings": settings.as_dict()}, indent=2))
    replace_folder(part, folder, backup_suffix=UNREFINED_SUFFIX)
    return summary
