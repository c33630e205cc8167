"""New photos registered against any d2sfm reconstruction (``python -m d2sfm.localize images``).

The queries are extracted with the reference scene's own settings into the output folder, paired with the
reference images (all of them, or the best by global descriptor), matched against the reference's features.h5
(read, never written), and each query's matches to reference keypoints that the reference model observes become
2D-3D correspondences: the model's observations are the refined keypoints its points were triangulated from.
With ``refine`` each such query keypoint is first aligned by patch to that observation in its reference photo
(the observation held fixed, one position per pair, as InLoc's queries are refined), so the query's 2D point is
as precise as the reference's. A pose then comes from pycolmap's LO-RANSAC P3P and refinement, at the given
intrinsics or with the focal length estimated. Poses are written in the benchmarks' format (``name qw qx qy qz
tx ty tz``) and scored when the true cameras are given. Every stage is recorded in the output folder and skipped
once done.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pycolmap

from d2sfm.config import ImagesLocalizationConfig
from d2sfm.errors import D2sfmError
from d2sfm.evaluation.ground_truth import read_truth
from d2sfm.io.h5 import list_entries, read_global_descriptors, read_keypoints
from d2sfm.io.images import list_images
from d2sfm.io.matches_h5 import read_matches
from d2sfm.localization.absolute_pose import estimate_pose
from d2sfm.localization.pose_scores import parse_thresholds
from d2sfm.localization.poses import Pose, pose_from_rotation_centre, write_poses
from d2sfm.localization.submission import QueryOutcome, finish_localization
from d2sfm.matching.pairs import EXHAUSTIVE_UP_TO, Pair, read_pairs, write_pairs
from d2sfm.pipeline.features import (
    EARLIER_MATCHING,
    check_extraction_settings,
    extract_missing,
    match_missing,
    match_settings,
    unmatched_pairs,
)
from d2sfm.pipeline.stage_settings import StageSettings
from d2sfm.pipeline.stages import RunFolder
from d2sfm.refinement.database_refinement import read_refined_query_keypoints, refine_queries_against_fixed
from d2sfm.runtime.device import resolve_device
from d2sfm.sfm.cameras import parse_camera_params
from d2sfm.sfm.mapping import read_models

log = logging.getLogger("d2sfm")
IMAGES_STAGES = ("pairs", "match", "refine", "localize")  # whose settings are recorded: a change redoes what follows

def observed_points(model: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
    """Per registered reference image, the 3D point id of each keypoint (-1 where none): keypoint k of features.h5
    is the model's point2D k."""
    observed = {}
    for image in model.images.values():
        if image.has_pose:
            observed[image.name] = np.array([point.point3D_id if point.has_point3D() else -1
                                             for point in image.points2D], dtype=np.int64)
    return observed


def query_pairs(queries: list[str], references: list[str], features: Path, reference_features: Path,
                method: str, top_k: int) -> list[Pair]:
    """(query, reference image) pairs: every reference image, or the ``top_k`` most similar by global
    descriptor."""
    if method == "auto":
        method = "exhaustive" if len(references) <= EXHAUSTIVE_UP_TO else "retrieval"
    if method == "exhaustive":
        return [(query, reference) for query in queries for reference in references]
    if method != "retrieval":
        raise D2sfmError(f"pairs {method!r}: use exhaustive, retrieval or auto")
    query_global = read_global_descriptors(features, queries)
    reference_global = read_global_descriptors(reference_features, references)
    similarity = query_global @ reference_global.T
    best = np.argsort(-similarity, axis=1)[:, :top_k]
    return [(query, references[index]) for query, row in zip(queries, best) for index in row]


def query_camera(config: ImagesLocalizationConfig, path: Path) -> tuple[pycolmap.Camera, bool]:
    """The query's camera and whether its focal length is to be estimated (no known intrinsics given)."""
    params = parse_camera_params(config.camera_model, config.camera_params)
    camera = pycolmap.infer_camera_from_image(path)
    if params:
        return pycolmap.Camera(model=config.camera_model, width=camera.width, height=camera.height,
                               params=params), False
    guessed = pycolmap.Camera.create_from_model_name(1, config.camera_model, camera.mean_focal_length(),
                                                     camera.width, camera.height)
    return guessed, True


def observed_positions(model: pycolmap.Reconstruction, observed: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """Per registered image name, its keypoints' positions in the model (N, 2; refined where the model was),
    NaN where no 3D point is observed: what a query keypoint is aligned to."""
    positions = {}
    for image in model.images.values():
        if image.has_pose:
            xy = np.array([point.xy for point in image.points2D], dtype=np.float64).reshape(-1, 2)
            xy[observed[image.name] < 0] = np.nan
            positions[image.name] = xy
    return positions


def localize_query(query: str, query_dir: Path, features: Path, matches: Path, references: list[str],
                   observed: dict[str, np.ndarray], model: pycolmap.Reconstruction,
                   config: ImagesLocalizationConfig, refined: Path | None = None) -> QueryOutcome:
    """One query's pose from its matches to the reference images' observed keypoints; ``refined``: the query
    keypoints aligned per pair (refine_queries_against_fixed's file) instead of its detections."""
    start = time.perf_counter()
    detections, _ = read_keypoints(features, query)
    points2D, points3D, per_reference = [], [], {}
    for reference in references:
        pair_matches, _ = read_matches(matches, query, reference)
        if len(pair_matches) == 0:
            continue
        per_reference[reference] = len(pair_matches)
        point_ids = observed[reference][pair_matches[:, 1]]
        seen = point_ids >= 0
        keypoints = (detections if refined is None
                     else read_refined_query_keypoints(refined, query, reference, detections))
        points2D.append(keypoints[pair_matches[seen, 0], :2])
        points3D.extend(model.points3D[int(point_id)].xyz for point_id in point_ids[seen])
    best = max(per_reference, key=per_reference.get) if per_reference else None
    total = int(sum(per_reference.values()))
    correspondences = int(sum(len(points) for points in points2D))
    camera, estimate_focal = query_camera(config, query_dir / query)
    pose, inliers = (estimate_pose(np.concatenate(points2D), np.asarray(points3D), camera, config.ransac_max_error,
                                   refine_focal=estimate_focal) if correspondences >= 4 else (None, 0))
    localized = pose is not None and inliers >= config.min_inliers
    reason = "" if localized else (f"{inliers} inliers of {correspondences} 2D-3D correspondences "
                                   f"(at least {config.min_inliers} needed)")
    return QueryOutcome(query, localized, pose if localized else None, total, inliers,
                        round(time.perf_counter() - start, 3), reason=reason,
                        details={"correspondences_2d3d": correspondences, "best_reference": best,
                                 "focal": float(camera.mean_focal_length())})


def reference_record(reference: Path) -> dict:
    """Which reconstruction the queries were paired with: the scene, and when its features and model were last
    written (a scene reconstructed again since has other keypoints and points)."""
    model = reference / "sparse" / "0"
    return {"reference": str(reference.resolve()),
            "features_modified_ns": (reference / "features.h5").stat().st_mtime_ns,
            "model_modified_ns": max((path.stat().st_mtime_ns for path in model.iterdir() if path.is_file()),
                                     default=0)}


def reference_photos(config: ImagesLocalizationConfig, reference: Path) -> Path:
    """The reference scene's photos, which refinement aligns the query keypoints to."""
    return Path(config.reference_images) if config.reference_images else reference / "images"


def check_reference_photos(folder: Path, observed: dict) -> None:
    """Every photo of the model's observed images must be there for refinement (checked before any work)."""
    missing = sorted(name for name in observed if not (folder / name).is_file())
    if missing:
        raise D2sfmError(f"{folder}: the reference photo {missing[0]} is not there ({len(missing)} missing); give "
                         "the reference scene's photos with --reference-images, or --no-refine")


def query_truth(truth_dir: Path, names: list[str]) -> list[tuple[str, Pose]]:
    """The true cameras of the queries (read before any work: a bad --gt must not cost the localization)."""
    truth = read_truth(truth_dir)
    missing = [name for name in names if name not in truth]
    if missing:
        raise D2sfmError(f"{truth_dir}: no true camera for {len(missing)} of the queries (first: {missing[0]}); "
                         "the truth must name the photos as the query folder does")
    return [(name, pose_from_rotation_centre(truth[name].rotation, truth[name].centre)) for name in names]


def localize_images(reference: str | os.PathLike, queries: str | os.PathLike,
                    config: ImagesLocalizationConfig | None = None, output: str | os.PathLike | None = None,
                    gt: str | os.PathLike | None = None) -> dict:
    """Localize every photo of ``queries`` against the reconstruction in the scene folder ``reference``; writes
    poses.txt and summary.json under ``output`` (default ``queries``/../localization) and returns the summary,
    scored against the true cameras ``gt`` when given."""
    config = config or ImagesLocalizationConfig()
    reference, queries = Path(reference), Path(queries)
    output = Path(output) if output is not None else queries.parent / "localization"
    reference_features = reference / "features.h5"
    if not reference_features.is_file() or not (reference / "sparse" / "0").is_dir():
        raise D2sfmError(f"{reference}: not a reconstructed d2sfm scene (features.h5 and sparse/0 are needed); run "
                         "python -m d2sfm.reconstruct on it first")
    if not queries.is_dir():
        raise D2sfmError(f"{queries}: no such folder of query photos")
    check_extraction_settings(config.features, reference_features, config.run.progress)
    parse_camera_params(config.camera_model, config.camera_params)
    model = read_models(reference / "sparse")[0]
    observed = observed_points(model)
    names = list_images(queries)
    clash = sorted(set(names) & set(list_entries(reference_features)))
    if clash:
        raise D2sfmError(f"{queries}: {len(clash)} query photo(s) have the name of a reference image (first: "
                         f"{clash[0]}); rename them")
    if not names:
        raise D2sfmError(f"{queries}: no photos to localize")
    true_poses = query_truth(Path(gt), names) if gt is not None else None
    if config.refine:
        check_reference_photos(reference_photos(config, reference), observed)
    if output.resolve() == reference.resolve() or output.resolve() == queries.resolve():
        raise D2sfmError(f"{output}: the output folder must not be the reference scene or the query folder (its "
                         "features and pairs would be overwritten); choose another --output")
    # the folder is opened (and --overwrite clears it) only once every input is known to be good
    folder = RunFolder(output, overwrite=config.run.overwrite)
    features, pairs_path, matches = folder.path("features.h5"), folder.path("pairs.txt"), folder.path("matches.h5")
    references = sorted(observed)
    refined = folder.path("refined_keypoints.h5") if config.refine else None
    settings = StageSettings(folder.state, {
        "pairs": {"pairs": config.pairs, "top_k": config.top_k, **reference_record(reference)},
        "match": match_settings(config.matching),
        "refine": {"reference_images": config.reference_images},
        "localize": {"camera_model": config.camera_model, "camera_params": config.camera_params,
                     "ransac_max_error": config.ransac_max_error, "min_inliers": config.min_inliers,
                     "thresholds": config.thresholds, "refine": config.refine,
                     "gt": str(Path(gt).resolve()) if gt is not None else None}}, IMAGES_STAGES,
        implicit={"match": EARLIER_MATCHING})
    for stage, stale in (("pairs", pairs_path), ("match", matches), ("refine", folder.path("refined_keypoints.h5"))):
        if stage in settings.redo:
            stale.unlink(missing_ok=True)

    def extract() -> None:
        _, failed = extract_missing(config.features, config.run, queries, names, features)
        for _, error in failed:
            log.info(f"  skipped: {error}")

    check_extraction_settings(config.features, features, config.run.progress)
    done = set(list_entries(features)) if features.is_file() else set()
    folder.stages.run("extract", all(name in done for name in names), extract)
    listed = set(list_entries(features))
    extracted = [name for name in names if name in listed]
    paired = {query for query, _ in read_pairs(pairs_path)} if pairs_path.is_file() else set()
    # a query added since the pairs were written gets its pairs (the matched ones are not matched again)
    folder.stages.run("pairs", paired >= set(extracted), lambda: write_pairs(pairs_path, query_pairs(
        extracted, references, features, reference_features, config.pairs, config.top_k)))
    settings.finished("pairs")
    pairs = read_pairs(pairs_path)
    if config.run.ray is not None:
        raise D2sfmError("localize images runs in this process; leave out --ray")
    folder.stages.run("match", not unmatched_pairs(pairs, matches), lambda: match_missing(
        config.matching, config.run, [features, reference_features], pairs, matches, keep_unrecorded=True))
    settings.finished("match")
    by_query: dict[str, list[str]] = {}
    for query, image in pairs:
        by_query.setdefault(query, []).append(image)
    if refined is not None:
        refine_stage(config, folder, refined, reference, model, observed, queries, features, matches, by_query)
    settings.finished("refine")
    truth = None
    if true_poses is not None:  # for the benchmarks' scorer
        truth = folder.path("ground_truth_poses.txt")
        write_poses(truth, true_poses)
    summary: dict = {}

    def localize() -> None:
        outcomes = [localize_query(name, queries, features, matches, by_query.get(name, []), observed, model, config,
                                   refined) for name in extracted]
        scores = finish_localization(outcomes, output / "poses.txt", output / "summary.json", truth,
                                     parse_thresholds(config.thresholds),
                                     extra={"reference": str(reference), "refined": config.refine})
        summary.update(localized=sum(o.localized for o in outcomes), queries=len(names),
                       scores=scores.as_dict() if scores else None, refined=config.refine)
        settings.finished("localize")
        folder.save(result=summary, localized_queries=extracted)

    finished = folder.state.get("result")
    folder.stages.run("localize", bool(finished) and "localize" not in settings.redo
                      and (output / "poses.txt").is_file()
                      and folder.state.get("localized_queries") == extracted  # a query added since: all again
                      and finished.get("refined", False) == config.refine
                      and (truth is None or finished.get("scores") is not None), localize)
    settings.finished("localize")
    folder.save()
    return dict(folder.state.get("result", summary))



def refine_stage(config: ImagesLocalizationConfig, folder: RunFolder, refined: Path, reference: Path,
                 model: pycolmap.Reconstruction, observed: dict[str, np.ndarray], queries: Path, features: Path,
                 matches: Path, by_query: dict[str, list[str]]) -> None:
    """The query keypoints matched to observed reference keypoints, aligned to those observations (skipped when
    ``refined`` holds them already)."""
    reference_images = reference_photos(config, reference)
    positions = observed_positions(model, observed)
    query_set = set(by_query)

    def image_path(name: str) -> Path:
        return queries / name if name in query_set else reference_images / name

    def refine() -> None:
        summary = refine_queries_against_fixed(
            features, matches, by_query, "/", None, resolve_device(config.run.device), refined,
            progress=config.run.progress, fixed_keypoints=lambda image, indices: positions[image][indices],
            image_path=image_path)
        log.info(f"  queries: {summary.describe()}")
        folder.save(refined_queries=sorted(by_query))

    # the file holds the queries it was made for: queries added since are refined with the others
    folder.stages.run("refine", refined.is_file() and folder.state.get("refined_queries") == sorted(by_query),
                      refine)
