"""InLoc: indoor queries localized against database cutouts whose pixels carry 3D coordinates from RGB-D scans.

Steps (the protocol of the D2-Net paper's InLoc experiment, as hloc's ``localize_inloc`` runs it):

1. for each query ``query/iphone7/*.JPG``, its top-k retrieved cutouts from a pair list (default 40);
2. D2 features of queries and cutouts (keypoints at the original resolution), MNN matches per pair;
3. 2D-3D: each matched cutout keypoint takes the XYZ of its pixel in the cutout's ``.jpg.mat`` (``XYZcut``);
   pixels without a scan point (NaN) are dropped; with ``--refine`` the query keypoints are first moved to where
   their image patches agree with their matched cutout keypoints', which stay fixed (``--refine-method``: patch
   alignment by default, or D2's early VGG features; one position per match, ``refined_queries.h5``; features.h5
   keeps the detections);
4. absolute pose by pycolmap (P3P in LO-RANSAC, then non-linear refinement) at the protocol's query intrinsics:
   SIMPLE_PINHOLE, focal length = 28/36 of the image width (the iPhone 7's 28 mm equivalent lens), principal
   point at the centre;
5. the submission, ``InLoc_eval_[d2sfm].txt``: ``IMG_xxxx.JPG qw qx qy qz tx ty tz``.

A query that cannot be localized is given the pose of its best-matching cutout, computed from the cutout's own
XYZ (cutouts are perspective views of ``--cutout-focal`` pixels, 1385.64 for InLoc's 1600 x 1200 cutouts).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import scipy.io
from tqdm import tqdm

from d2sfm.config import InLocConfig
from d2sfm.errors import D2sfmError
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import write_text_atomic
from d2sfm.io.h5 import read_keypoints
from d2sfm.io.keypoints import colmap_xy_to_pixel_index, from_integer_centres
from d2sfm.io.matches_h5 import read_matches
from d2sfm.localization.absolute_pose import estimate_pose
from d2sfm.localization.pose_scores import THRESHOLD_PRESETS
from d2sfm.localization.poses import Pose
from d2sfm.localization.submission import QueryOutcome, finish_localization, ground_truth_if_present
from d2sfm.matching.pairs import Pair, read_pairs
from d2sfm.pipeline.features import EARLIER_MATCHING, extract_and_match, match_settings
from d2sfm.pipeline.stage_settings import StageSettings, pairs_digest
from d2sfm.pipeline.stages import RunFolder
from d2sfm.refinement.database_refinement import (
    read_refined_query_keypoints,
    refine_queries_against_fixed,
    refined_keypoints_record,
)
from d2sfm.runtime.device import resolve_device

log = logging.getLogger("d2sfm")

README = "datasets/inloc.md"
GROUND_TRUTH = "query_ground_truth.txt"
INLOC_STAGES = ("match", "refine", "localize")  # whose settings are recorded: a change redoes what follows
IPHONE7_FOCAL_PER_WIDTH = 28.0 / 36.0
RANSAC_MAX_ERROR_PER_WIDTH = 48.0 / 4032.0


@dataclass(frozen=True)
class InLocLayout:
    root: Path

    @property
    def images(self) -> Path:
        return self.root

    @property
    def cutouts(self) -> Path:
        return self.root / "database" / "cutouts"

    @property
    def queries(self) -> Path:
        return self.root / "query" / "iphone7"

    @property
    def default_pairs(self) -> Path:
        return self.root / "pairs" / "pairs-query-netvlad40.txt"

    def scan(self, cutout_name: str) -> Path:
        return self.root / f"{cutout_name}.mat"

    def require(self, *paths: Path) -> None:
        for path in paths:
            if not path.exists():
                raise D2sfmError(f"{path}: missing; the InLoc layout is described in {README}")


def query_camera(width: int, height: int) -> pycolmap.Camera:
    """The InLoc protocol's query intrinsics."""
    return pycolmap.Camera(model="SIMPLE_PINHOLE", width=width, height=height,
                           params=[IPHONE7_FOCAL_PER_WIDTH * width, width / 2, height / 2])


def read_scan(path: Path) -> np.ndarray:
    """``XYZcut`` of a cutout's ``.jpg.mat``: (H, W, 3) world coordinates, NaN where the scan has no point."""
    try:
        xyz = scipy.io.loadmat(str(path), variable_names=["XYZcut"])["XYZcut"]
    except (OSError, ValueError, KeyError) as error:
        raise D2sfmError(f"{path}: cannot read XYZcut ({error}); see {README}") from None
    return np.asarray(xyz, dtype=np.float64)


def scan_points(xyz: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XYZ at the pixels of COLMAP-convention keypoints (cutout resolution); returns (points, valid mask)."""
    rows, columns = colmap_xy_to_pixel_index(keypoints, xyz.shape[1], xyz.shape[0])
    points = xyz[rows, columns]
    valid = np.isfinite(points).all(axis=1) & (np.abs(points).sum(axis=1) > 0)
    return points, valid


def cutout_pose(xyz: np.ndarray, focal: float, step: int = 8) -> Pose | None:
    """The pose of a cutout from its own scan coordinates (a perspective view with focal ``focal``)."""
    height, width = xyz.shape[:2]
    columns, rows = np.meshgrid(from_integer_centres(np.arange(0, width, step)),
                                from_integer_centres(np.arange(0, height, step)))
    pixels = np.stack([columns.ravel(), rows.ravel()], axis=1)
    points, valid = scan_points(xyz, pixels)
    camera = pycolmap.Camera(model="SIMPLE_PINHOLE", width=width, height=height,
                             params=[focal, width / 2, height / 2])
    pose, _ = estimate_pose(pixels[valid], points[valid], camera, max_error=4.0)
    return pose


def _query_pairs(pairs: list[Pair], queries: set[str], top_k: int) -> dict[str, list[str]]:
    retrieved: dict[str, list[str]] = {}
    for a, b in pairs:
        query, cutout = (a, b) if a in queries else (b, a)
        if query not in queries:
            raise D2sfmError(f"pair ({a}, {b}) names no query of query/iphone7/; pairs must be 'query cutout'")
        if len(retrieved.setdefault(query, [])) < top_k:
            retrieved[query].append(cutout)
    return retrieved


def localize_query(layout: InLocLayout, features_path: Path, matches_path: Path, query: str,
                   cutouts: list[str], max_error: float | None,
                   refined_path: Path | None = None) -> tuple[Pose | None, int, int, str | None]:
    """(pose, matches, inliers, best cutout) for one query from its retrieved cutouts; with ``refined_path``
    (--refine) each pair's matched query keypoints are at their refined positions for that pair."""
    detected, (width, height) = read_keypoints(features_path, query)
    points2D, points3D, per_cutout = [], [], {}
    for cutout in cutouts:
        matches, _ = read_matches(matches_path, query, cutout)
        if len(matches) == 0:
            continue
        per_cutout[cutout] = len(matches)
        cutout_keypoints, _ = read_keypoints(features_path, cutout)
        keypoints = (detected if refined_path is None else
                     read_refined_query_keypoints(refined_path, query, cutout, detected))
        xyz, valid = scan_points(read_scan(layout.scan(cutout)), cutout_keypoints[matches[:, 1]])
        points2D.append(keypoints[matches[valid, 0]])
        points3D.append(xyz[valid])
    best = max(per_cutout, key=per_cutout.get) if per_cutout else (cutouts[0] if cutouts else None)
    if not points2D:
        return None, 0, 0, best
    max_error = max_error or RANSAC_MAX_ERROR_PER_WIDTH * width
    pose, inliers = estimate_pose(np.concatenate(points2D).astype(np.float64), np.concatenate(points3D),
                                  query_camera(int(width), int(height)), max_error)
    return pose, int(sum(per_cutout.values())), inliers, best


def localize(dataset: str | Path, config: InLocConfig | None = None, output: str | Path | None = None) -> dict:
    """Localize the queries against the scans, write the submission file and summary.json (scores where the
    ground truth is present) under ``output`` (default outputs/inloc); returns the summary. Finished stages are
    skipped."""
    config = config or InLocConfig()
    layout = InLocLayout(Path(dataset))
    pairs_path = Path(config.pairs) if config.pairs else layout.default_pairs
    layout.require(layout.root, layout.cutouts, layout.queries, pairs_path)
    if config.top_k < 1:
        raise D2sfmError("--top-k must be at least 1")
    query_names = sorted(f"query/iphone7/{p.name}" for p in layout.queries.iterdir()
                         if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not query_names:
        raise D2sfmError(f"{layout.queries}: no query images; see {README}")

    retrieved = _query_pairs(read_pairs(pairs_path), set(query_names), config.top_k)
    unknown = sorted({c for cs in retrieved.values() for c in cs if not (layout.root / c).is_file()})
    if unknown:
        raise D2sfmError(f"{pairs_path}: {len(unknown)} cutouts of the pairs are not in {layout.cutouts} "
                         f"(first: {unknown[0]}); check the dataset folder or the pair list")
    no_scan = sorted({c for cs in retrieved.values() for c in cs if not layout.scan(c).is_file()})
    if no_scan:
        raise D2sfmError(f"{layout.scan(no_scan[0])}: missing scan of a retrieved cutout ({len(no_scan)} missing); "
                         f"each cutout needs its .jpg.mat beside it, see {README}")
    without_pairs = [q for q in query_names if q not in retrieved]
    for query in without_pairs:
        log.warning(f"  warning: {query} has no pair in {pairs_path}; it will be reported as failed")
    pairs = [(q, c) for q, cs in retrieved.items() for c in cs]
    names = sorted({n for p in pairs for n in p})
    log.info(f"InLoc: {len(query_names)} queries, {len(pairs)} pairs (top {config.top_k}), {len(names)} images")
    # the folder is opened (and --overwrite clears it) only once every input is known to be good
    run = RunFolder(Path(output or "outputs/inloc"), config.run.overwrite)
    paths = {key: run.path(name) for key, name in [
        ("features", "features.h5"), ("matches", "matches.h5"), ("poses", "localization.json"),
        ("summary", "summary.json"), ("refined", "refined_queries.h5")]}
    progress = config.run.progress

    wanted = config.refine.method if config.refine.enabled else False  # how the poses' query keypoints were refined
    settings = StageSettings(run.state, {
        "match": match_settings(config.matching),
        "refine": {"pairs": pairs_digest(pairs)},  # the refined file's own record says its method
        "localize": {"ransac_max_error": config.ransac_max_error, "refined": wanted}}, INLOC_STAGES,
        # a folder of an earlier release recorded how its poses' query keypoints were refined, not as settings
        implicit={"match": EARLIER_MATCHING, "localize": {"refined": run.state.get("poses_refined", False)}})
    extracted, usable = extract_and_match(config.features, config.matching, config.run, run, layout.images,
                                          names, pairs, settings)
    usable_retrieved = {q: [c for c in cs if c in extracted] for q, cs in retrieved.items() if q in extracted}

    def refine() -> None:
        summary = refine_queries_against_fixed(
            paths["features"], paths["matches"], usable_retrieved, layout.images,
            resolve_weights(config.features.weights, progress=progress), resolve_device(config.run.device),
            paths["refined"], config.refine.settings(), progress=progress)
        log.info(f"  queries: {summary.describe()}")
        settings.finished("refine")

    if "refine" in settings.redo or (paths["refined"].is_file() and refined_keypoints_record(paths["refined"]).get(
            "settings", {}).get("method", "featuremetric") != config.refine.method):
        paths["refined"].unlink(missing_ok=True)  # refined for other pairs, or by another method
    if config.refine.enabled:
        run.stages.run("refine", paths["refined"].is_file(), refine)
    settings.finished("refine")
    if "localize" in settings.redo:
        paths["poses"].unlink(missing_ok=True)
    query_keypoints = paths["refined"] if config.refine.enabled else None

    def localize() -> None:
        done = json.loads(paths["poses"].read_text()) if paths["poses"].is_file() else {}
        pending = [q for q in query_names if q not in done]
        for index, query in enumerate(tqdm(pending, desc="localizing queries", unit="query", disable=not progress)):
            start = time.perf_counter()
            cutouts = [c for c in retrieved.get(query, []) if c in extracted]
            if query in extracted:
                pose, matches, inliers, best = localize_query(layout, paths["features"], paths["matches"], query,
                                                              cutouts, config.ransac_max_error, query_keypoints)
            else:
                pose, matches, inliers, best = None, 0, 0, cutouts[0] if cutouts else None
            done[query] = {"pose": None if pose is None else [*pose.qvec, *pose.tvec], "matches": matches,
                           "inliers": inliers, "best_cutout": best, "seconds": time.perf_counter() - start,
                           "readable": query in extracted}
            if index % 20 == 19 or index == len(pending) - 1:  # resumable every 20 queries
                write_text_atomic(paths["poses"], json.dumps(done, indent=1))
                settings.finished("localize")  # the poses written so far are this run's
                run.save()

    run.stages.run("localize", paths["poses"].is_file() and all(
        q in json.loads(paths["poses"].read_text()) for q in query_names), localize)
    settings.finished("localize")
    run.save()

    results = json.loads(paths["poses"].read_text())
    outcomes = []
    for query in query_names:
        r = results[query]
        localized = r["pose"] is not None and r["inliers"] >= config.min_inliers
        fallback, reason = None, ""
        if localized:
            pose = Pose(np.array(r["pose"][:4]), np.array(r["pose"][4:]))
        else:
            fallback = r["best_cutout"]
            pose = cutout_pose(read_scan(layout.scan(fallback)), config.cutout_focal) if fallback else None
            reason = ("image unreadable" if not r["readable"] else
                      f"{r['matches']} matches, {r['inliers']} inliers (need {config.min_inliers})")
        outcomes.append(QueryOutcome(query, localized, pose, r["matches"], r["inliers"], r["seconds"], fallback,
                                     reason))
    finish_localization(
        outcomes, run.path("InLoc_eval_[d2sfm].txt"), paths["summary"],
        ground_truth_if_present(layout.root / GROUND_TRUTH), THRESHOLD_PRESETS["inloc"],
        extra={"dataset": str(layout.root), "pairs": len(usable), "top_k": config.top_k,
               "refinement": refined_keypoints_record(paths["refined"]) if config.refine.enabled else None,
               "unreadable": run.state.get("unreadable", []), "stage_seconds": run.stages.times})
    return json.loads(paths["summary"].read_text())
