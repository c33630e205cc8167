"""Keypoint refinement of a COLMAP database before mapping (and of localization queries against a fixed reference):
tracks from the verified matches, patch alignment or featuremetric adjustment on dense D2 feature maps, the refined
keypoints written back with a record of what was done, so that a rerun knows the database is refined.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import torch
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import atomic_database, atomic_path, copy_database
from d2sfm.io.h5 import read_keypoints
from d2sfm.io.images import gray_image_reader, read_refinement_image
from d2sfm.io.matches_h5 import pair_key, read_matches
from d2sfm.refinement.feature_patches import DenseFeatureNet, PatchSettings
from d2sfm.refinement.keypoint_adjustment import adjust_keypoints
from d2sfm.refinement.patch_alignment import align_keypoints, edge_affinities
from d2sfm.refinement.settings import METHODS, RefineSettings  # noqa: F401 (the settings' historical home)
from d2sfm.refinement.tracks import Tracks, build_tracks, read_verified_matches
from d2sfm.sfm.database import read_only, stamp_database

log = logging.getLogger("d2sfm")

@dataclass
class RefinementSummary:
    images: int
    tracks: int
    tracks_adjusted: int
    keypoints_in_tracks: int
    keypoints_moved: int
    median_shift_px: float
    p90_shift_px: float
    patch_seconds: float
    adjust_seconds: float
    cost_before: float | None = None  # featuremetric
    cost_after: float | None = None
    median_correlation: float | None = None  # patch: of the aligned patches

    def describe(self) -> str:
        moved = (f"{self.keypoints_moved} of {self.keypoints_in_tracks} tracked keypoints moved in "
                 f"{self.tracks_adjusted} tracks (median {self.median_shift_px:.2f} px, 90% under "
                 f"{self.p90_shift_px:.2f} px)")
        if self.cost_before is not None:
            return f"{moved}; featuremetric cost {self.cost_before:.1f} -> {self.cost_after:.1f}"
        return f"{moved}; median patch correlation {self.median_correlation or 0:.3f}"


def read_database_keypoints(database_path: str | os.PathLike) -> tuple[dict[int, str], dict[int, np.ndarray]]:
    """{image id: name}, {image id: (N, 2+) keypoints as stored} of a database."""
    with pycolmap.Database.open(database_path) as database:
        names = {image.image_id: image.name for image in database.read_all_images()}
        keypoints = {image_id: np.asarray(database.read_keypoints(image_id)) for image_id in names}
    return names, keypoints


def refine_keypoints(keypoints: dict[int, np.ndarray], names: dict[int, str],
                     matches: dict[tuple[int, int], np.ndarray], image_dir: str | os.PathLike,
                     weights: str | os.PathLike | None, device: torch.device, settings: RefineSettings | None = None,
                     fixed_images: Collection[int] = (), progress: bool = True,
                     ) -> tuple[dict[int, np.ndarray], RefinementSummary]:
    """``keypoints`` (image id -> (N, 2+), COLMAP convention) with every keypoint that ``matches`` put in a track
    refined; the keypoints of ``fixed_images`` are held still (the others align to them)."""
    settings = settings or RefineSettings()
    if settings.method not in METHODS:
        raise ValueError(f"refinement method must be one of {', '.join(METHODS)}, got {settings.method!r}")
    tracks = build_tracks(matches)
    fixed = np.isin(tracks.image_ids, np.fromiter(fixed_images, np.int64, len(fixed_images)))
    xy = np.zeros((len(tracks.track_ids), 2))
    for image_id, nodes in tracks.nodes_by_image():
        xy[nodes] = keypoints[image_id][tracks.keypoint_ids[nodes], :2]
    started = time.perf_counter()
    if settings.method == "patch":
        edge_maps = edge_affinities(matches, keypoints)
        alignment = align_keypoints(tracks, xy, edge_maps, fixed, gray_image_reader(names, Path(image_dir)),
                                    settings.alignment, device, progress)
        new_xy, extra = alignment.positions, {"median_correlation": round(alignment.median_correlation, 4)}
        tracks_adjusted = int(len(np.unique(tracks.track_ids[alignment.aligned])))
        patch_seconds = 0.0
    else:
        patches, centres, factors = _collect_patches(tracks, names, keypoints, Path(image_dir), weights, device,
                                                     settings.patches, progress)
        if device.type == "cuda":  # the patches' GPU work belongs to their time, not the adjustment's
            torch.cuda.synchronize(device)
        patch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        displacement, report = adjust_keypoints(patches, centres, tracks.track_ids, tracks.edges,
                                                settings.adjustment, fixed)
        new_xy = xy + displacement.cpu().numpy().astype(np.float64) * factors
        extra = {"cost_before": report.cost_before, "cost_after": report.cost_after}
        tracks_adjusted = report.tracks_adjusted
    refined = {image_id: points.copy() for image_id, points in keypoints.items()}
    for image_id, nodes in tracks.nodes_by_image():
        refined[image_id][tracks.keypoint_ids[nodes], :2] = new_xy[nodes]
    lengths = np.linalg.norm(new_xy - xy, axis=1)
    moved = lengths[lengths > 1e-6]
    summary = RefinementSummary(
        images=len(np.unique(tracks.image_ids)), tracks=tracks.num_tracks, tracks_adjusted=tracks_adjusted,
        keypoints_in_tracks=len(tracks.track_ids), keypoints_moved=len(moved),
        median_shift_px=float(np.median(moved)) if len(moved) else 0.0,
        p90_shift_px=float(np.percentile(moved, 90)) if len(moved) else 0.0, patch_seconds=round(patch_seconds, 2),
        adjust_seconds=round(time.perf_counter() - started, 2), **extra)
    return refined, summary


def _collect_patches(tracks: Tracks, names: dict[int, str], keypoints: dict[int, np.ndarray], image_dir: Path,
                     weights, device: torch.device, settings: PatchSettings, progress: bool):
    """Patches (K, C, P, P), centres (K, 2) and pixel factors (K, 2) of every tracked keypoint, image by image."""
    net = DenseFeatureNet(weights, settings, device)
    count = len(tracks.track_ids)
    patches = torch.empty((count, net.channels, settings.size, settings.size), dtype=torch.float16, device=device)
    centres = torch.empty((count, 2), dtype=torch.float32, device=device)
    factors = np.empty((count, 2))
    by_name: dict[str, list[tuple[int, np.ndarray]]] = {}  # ids sharing an image (InLoc's per-pair query copies)
    for image_id, nodes in tracks.nodes_by_image():
        by_name.setdefault(names[image_id], []).append((image_id, nodes))
    for name, id_nodes in tqdm(by_name.items(), desc="refinement features", unit="img", disable=not progress):
        image = read_refinement_image(image_dir / name)
        nodes = np.concatenate([nodes for _, nodes in id_nodes])
        xy = np.concatenate([keypoints[image_id][tracks.keypoint_ids[nodes], :2] for image_id, nodes in id_nodes])
        result = net.patches(image, xy)
        index = torch.from_numpy(nodes).to(device)
        patches[index] = result.patches
        centres[index] = result.centres
        factors[nodes] = result.pixel_factors
    return patches, centres, factors


# A table of our own in the database says its keypoints are refined (COLMAP ignores tables it does not know). It is
# written in the same atomic replacement as the keypoints, so an interrupted run can never refine twice.
REFINED_TABLE = "d2sfm_refinement"


def refinement_record(database_path: str | os.PathLike) -> dict | None:
    """What the refinement of a database reported (its summary and settings), or None if it is not refined."""
    with read_only(database_path) as connection:
        query = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
        if not connection.execute(query, (REFINED_TABLE,)).fetchone()[0]:
            return None
        row = connection.execute(f"SELECT record FROM {REFINED_TABLE}").fetchone()
        return json.loads(row[0]) if row else {}


def is_refined(database_path: str | os.PathLike) -> bool:
    return refinement_record(database_path) is not None


def write_keypoints(database_path: str | os.PathLike, keypoints: dict[int, np.ndarray], record: dict) -> None:
    """Replace the keypoints of a database and mark it refined (``record`` kept as JSON), atomically: a copy is
    updated, then moved over the original."""
    with atomic_database(database_path) as scratch:
        copy_database(database_path, scratch)
        with pycolmap.Database.open(scratch) as database:
            for image_id, points in keypoints.items():
                database.update_keypoints(image_id, np.ascontiguousarray(points, dtype=np.float32))
        with contextlib.closing(sqlite3.connect(scratch)) as connection, connection:
            connection.execute(f"CREATE TABLE IF NOT EXISTS {REFINED_TABLE} (record TEXT)")
            connection.execute(f"INSERT INTO {REFINED_TABLE} VALUES (?)", (json.dumps(record),))
        stamp_database(scratch)  # models mapped from the unrefined keypoints are stale from now on


def _refuse_refined(database_path: str | os.PathLike) -> None:
    if is_refined(database_path):
        raise D2sfmError(f"{database_path}: its keypoints are refined already; rebuild it from the raw detections")


def refine_database(database_path: str | os.PathLike, image_dir: str | os.PathLike, weights: str | os.PathLike,
                    device: torch.device, settings: RefineSettings | None = None,
                    progress: bool = True) -> RefinementSummary:
    """Refine every track of a verified database in place (for mapping); a database refined earlier is refused
    (its keypoints are no longer the detections)."""
    _refuse_refined(database_path)
    settings = settings or RefineSettings()
    names, keypoints = read_database_keypoints(database_path)
    refined, summary = refine_keypoints(keypoints, names, read_verified_matches(database_path), image_dir, weights,
                                        device, settings, progress=progress)
    write_keypoints(database_path, refined, summary_dict(summary, settings))
    return summary


def refine_localization_database(database_path: str | os.PathLike, image_dir: str | os.PathLike,
                                 query_names: Collection[str], weights: str | os.PathLike, device: torch.device,
                                 settings: RefineSettings | None = None,
                                 progress: bool = True) -> tuple[RefinementSummary, RefinementSummary]:
    """Localization's refinement, in place: first the database images' tracks (their matches among themselves),
    then each query's keypoints against the refined, fixed database keypoints, so that a query never moves the
    map and queries cannot influence each other. Returns both passes' summaries."""
    _refuse_refined(database_path)
    settings = settings or RefineSettings()
    names, keypoints = read_database_keypoints(database_path)
    queries = {image_id for image_id, name in names.items() if name in set(query_names)}
    verified = read_verified_matches(database_path)
    among_database = {pair: m for pair, m in verified.items() if not queries.intersection(pair)}
    with_queries = {pair: m for pair, m in verified.items() if queries.intersection(pair)}
    refined, database_pass = refine_keypoints(keypoints, names, among_database, image_dir, weights, device, settings,
                                              progress=progress)
    refined, query_pass = refine_keypoints(refined, names, with_queries, image_dir, weights, device, settings,
                                           fixed_images=set(names) - queries, progress=progress)
    write_keypoints(database_path, refined, {"database": summary_dict(database_pass, settings),
                                             "queries": summary_dict(query_pass, settings)})
    return database_pass, query_pass


def refine_queries_against_fixed(features_path: str | os.PathLike, matches_path: str | os.PathLike,
                                 retrieved: dict[str, Sequence[str]], image_dir: str | os.PathLike,
                                 weights: str | os.PathLike, device: torch.device, output: str | os.PathLike,
                                 settings: RefineSettings | None = None, progress: bool = True,
                                 fixed_keypoints: Callable[[str, np.ndarray], np.ndarray] | None = None,
                                 image_path: Callable[[str], Path] | None = None) -> RefinementSummary:
    """Localization without a COLMAP database (InLoc, ``localize images``): the query keypoints of every
    query-image match refined against the retrieved image's keypoint, which stays fixed (its 3D point comes from
    a scan or a model).

    By default the fixed keypoints are the image's in ``features_path`` and every photo is ``image_dir / name``.
    ``fixed_keypoints(image, indices)`` gives instead the positions (K, 2) to align to of the image's matched
    keypoints (``localize images``: the reference model's refined observations), NaN where the match is not
    wanted (no 3D point), and ``image_path(name)`` the path of a photo (queries and references in two folders).

    Each pair is refined on its own: a query keypoint matched in several retrieved images gets one position per
    match, because a 2D-3D correspondence only needs the query keypoint to agree with its own scan point, and
    merging them into one track let a wrong match pull a right one away (measured on the miniature InLoc: the
    matched keypoints' error against the truth fell 8% merged, 35% per pair). Queries are refined one at a time
    (memory stays that of one query's pairs). ``output`` gets, per pair (features.h5's pair keys), the matched
    query keypoints' indices and refined positions, and the summary, written atomically at the end."""
    settings = settings or RefineSettings()
    shifts, correlations = [], []
    totals = {"tracks": 0, "tracks_adjusted": 0, "keypoints_in_tracks": 0, "patch_seconds": 0.0,
              "adjust_seconds": 0.0}
    if settings.method == "featuremetric":
        totals.update(cost_before=0.0, cost_after=0.0)
    with atomic_path(output) as scratch, h5py.File(scratch, "w") as handle:
        for query, images in tqdm(retrieved.items(), desc="refining queries", unit="query", disable=not progress):
            names, keypoints, matches, rows = {}, {}, {}, {}
            query_xy = read_keypoints(features_path, query)[0]
            for image in images:
                pairs, _ = read_matches(matches_path, query, image)
                fixed_xy = (read_keypoints(features_path, image)[0][pairs[:, 1]] if fixed_keypoints is None
                            else fixed_keypoints(image, pairs[:, 1]))
                wanted = np.isfinite(fixed_xy[:, :2]).all(axis=1)
                pairs, fixed_xy = pairs[wanted], fixed_xy[wanted]
                if not len(pairs):
                    continue
                copy, fixed = len(names), len(names) + 1  # the query's matched keypoints, the image's
                names[copy], names[fixed] = query, image
                keypoints[copy] = query_xy[pairs[:, 0]]
                keypoints[fixed] = fixed_xy
                order = np.arange(len(pairs))
                matches[(copy, fixed)] = np.stack([order, order], axis=1)
                rows[copy] = (image, pairs[:, 0])
            if not matches:
                continue
            if image_path is not None:  # absolute paths: image_dir / path is the path
                names = {index: str(Path(image_path(name)).resolve()) for index, name in names.items()}
            refined, summary = refine_keypoints(keypoints, names, matches, image_dir, weights, device, settings,
                                                fixed_images=set(names) - set(rows), progress=False)
            for copy, (image, indices) in rows.items():
                group = handle.create_group(pair_key(query, image))
                group.create_dataset("query_indices", data=indices.astype(np.int64))
                group.create_dataset("keypoints", data=refined[copy][:, :2].astype(np.float32))
                shifts.append(np.linalg.norm(refined[copy][:, :2] - keypoints[copy][:, :2], axis=1))
            for key in totals:
                totals[key] += getattr(summary, key)
            if summary.median_correlation is not None:
                correlations.append(summary.median_correlation)
        lengths = np.concatenate(shifts) if shifts else np.zeros(0)
        moved = lengths[lengths > 1e-6]
        summary = RefinementSummary(
            images=len(retrieved), keypoints_moved=len(moved),
            median_shift_px=float(np.median(moved)) if len(moved) else 0.0,
            p90_shift_px=float(np.percentile(moved, 90)) if len(moved) else 0.0, **totals,
            median_correlation=float(np.median(correlations)) if correlations else None)
        handle.attrs[REFINED_TABLE] = json.dumps(summary_dict(summary, settings))
    return summary


def read_refined_query_keypoints(path: str | os.PathLike, query: str, image: str,
                                 keypoints: np.ndarray) -> np.ndarray:
    """``keypoints`` (the query's detections) with the ones matched in ``image`` at their refined positions for
    that pair (refine_queries_against_fixed's output)."""
    positions = np.array(keypoints, dtype=np.float64, copy=True)
    with h5py.File(path, "r") as handle:
        key = pair_key(query, image)
        if key in handle:
            positions[handle[key]["query_indices"][()], :2] = handle[key]["keypoints"][()]
    return positions


def refined_keypoints_record(path: str | os.PathLike) -> dict:
    """The summary and settings a file of refine_queries_against_fixed was written with."""
    with h5py.File(path, "r") as handle:
        return json.loads(handle.attrs[REFINED_TABLE])


def summary_dict(summary: RefinementSummary, settings: RefineSettings) -> dict:
    return {**asdict(summary), "settings": settings.as_dict()}


def drop_database_refined_unasked(database_path: Path, refine: bool, method: str = "patch") -> None:
    """A rerun without --refine (or with another method) must not map from these refined keypoints: the refined
    database is deleted, so that the pipeline rebuilds it from the detections."""
    if not database_path.is_file():
        return
    record = refinement_record(database_path)
    if record is None:
        return
    settings = record.get("settings") or record.get("database", {}).get("settings", {})
    if not refine:
        log.info(f"  {database_path.name} holds refined keypoints; rebuilding it from the detections (--no-refine)")
        database_path.unlink()
    elif settings.get("method", "featuremetric") != method:
        log.info(f"  {database_path.name} holds keypoints refined by another method; rebuilding it from the detections")
        database_path.unlink()


REFINE_ADVICE = ("give the database.db that d2sfm.reconstruct (or COLMAP's feature import and matching) built, with "
                 "geometrically verified matches")


def check_refinable_database(database_path: Path) -> None:
    """Refuse, in one line and without writing to it, a file that is not a COLMAP database holding an image with
    keypoints and verified pairs: opening it with pycolmap would write COLMAP's schema into it (an empty or
    foreign file) and report '0 of 0 keypoints moved'. ``read_only`` opens the file immutable."""
    if database_path.stat().st_size == 0:
        raise D2sfmError(f"{database_path}: is empty (0 bytes), not a COLMAP database; {REFINE_ADVICE}")
    with read_only(database_path) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [table for table in ("images", "keypoints", "two_view_geometries") if table not in tables]
        if missing:
            raise D2sfmError(f"{database_path}: not a COLMAP database (no {missing[0]!r} table); {REFINE_ADVICE}")
        with_keypoints = connection.execute(
            "SELECT COUNT(*) FROM keypoints JOIN images ON keypoints.image_id = images.image_id "
            "WHERE keypoints.rows > 0").fetchone()[0]
        if not with_keypoints:
            raise D2sfmError(f"{database_path}: has no image with keypoints, so nothing to refine; {REFINE_ADVICE}")
        verified = connection.execute("SELECT COUNT(*) FROM two_view_geometries WHERE rows > 0").fetchone()[0]
        if not verified:
            raise D2sfmError(f"{database_path}: has no geometrically verified image pairs, so no tracks to refine; "
                             f"{REFINE_ADVICE}")
