"""Sparse reconstruction with pycolmap (incremental by default, global as an option) and the ETH local-feature
benchmark's statistics of the result (D2-Net paper, Table 3)."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import replace_folder, scratch_folder
from d2sfm.io.model_files import read_model
from d2sfm.sfm.cameras import (
    INTRINSICS_REFINEMENT,
    IntrinsicsRefinement,
    apply_to_bundle_adjustment,
    apply_to_incremental,
)
from d2sfm.sfm.defaults import (  # noqa: F401 (re-exported: where they were first defined)
    D2_ABS_POSE_MIN_INLIER_RATIO,
    D2_ABS_POSE_MIN_INLIERS,
    D2_INIT_MIN_TRI_ANGLE,
    MAPPERS,
)

COLMAP_REFINEMENT = INTRINSICS_REFINEMENT["colmap"]
log = logging.getLogger("d2sfm")

# The global mapper checks no image's pose against its 2D-3D matches as the incremental mapper does, so an image
# it places must be held by at least COLMAP's own number of inliers (see drop_weak_images).
GLOBAL_MIN_IMAGE_POINTS = 30
COLMAP_MAPPER_OPTIONS = {"abs_pose_min_inliers": 30, "abs_pose_min_inlier_ratio": 0.25,  # COLMAP's defaults,
                         "init_min_tri_angle": 16.0}  # tuned for SIFT: the baselines run with them
# The mapper is randomised (and multithreaded, so not even a seed repeats it exactly). With the options above it
# still ends, now and then, with a partial model (Sacre Coeur: 1 to 2 runs in 12), or with a thin one: all images
# in, but few of their verified matches triangulated (Sacre Coeur multi-scale: 121 points where other seeds give
# ~1000). The incremental mapper runs again with the next seed (up to ``attempts`` runs in all, reconstruct's
# --mapper-attempts) when the largest model holds less than RETRY_BELOW_SHARE of the images, when less than
# RETRY_BELOW_TRIANGULATED of the keypoints of its images that have a verified match have a 3D point, or when an
# image it left out has at least RETRY_LINKED_MATCHES verified matches with its images (as many as COLMAP asks of
# an initial pair, so the image is plainly reachable: single-scale D2 on the Sacre Coeur photos now and then
# leaves out one image that has ~500 verified matches to the other nine); the best model (most images, then most
# points) is kept.
# Distortion is held at its start (none) while the incremental mapper grows a model, and estimated once all images
# are in, by a final global bundle adjustment (hold_distortion, bundle_adjust). Refined from the first pair on, as
# COLMAP does, a per-photo SIMPLE_RADIAL camera without EXIF focal can run away on a narrow-baseline pair of zoomed
# shots (focal 1e4 to 1e6 px, k of several units) and nothing else registers: on SIFT keypoints of the Sacre Coeur
# photos, 7 to 17 single mapping runs in 30 ended with 2 to 4 images; with distortion held, 0 to 1
# (docs/benchmarks.md, "Holding distortion while mapping", by benchmarks/mapper_options.py). Focal lengths are still
# refined throughout.
RETRY_BELOW_SHARE = 0.9
RETRY_BELOW_TRIANGULATED = 0.15
RETRY_LINKED_MATCHES = 100


def run_mapping(database_path: str | os.PathLike, image_dir: str | os.PathLike, output_dir: str | os.PathLike,
                mapper: str = "incremental", min_model_size: int = 3, seed: int = 0,
                text: bool = False, progress: bool = True, abs_pose_min_inliers: int = D2_ABS_POSE_MIN_INLIERS,
                abs_pose_min_inlier_ratio: float = D2_ABS_POSE_MIN_INLIER_RATIO,
                init_min_tri_angle: float = D2_INIT_MIN_TRI_ANGLE,
                attempts: int = 2, mapped_from: dict | None = None,
                intrinsics: IntrinsicsRefinement = COLMAP_REFINEMENT) -> list[pycolmap.Reconstruction]:
    """Map, then write the models as ``output_dir/0``, ``1``, ... largest first (binary, or text with
    ``text``), and ``mapped_from`` (what the models were made from) as MAPPED_FROM beside them. The folder appears
    only once everything is written, so a half-written model never exists; when no model is found, an earlier
    ``output_dir`` is left as it was. ``intrinsics``: which camera parameters the adjustments may change."""
    output_dir = Path(output_dir)
    scratch = scratch_folder(output_dir)
    if mapper == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.min_model_size = min_model_size
        options.random_seed = seed
        options.mapper.abs_pose_min_num_inliers = abs_pose_min_inliers
        options.mapper.abs_pose_min_inlier_ratio = abs_pose_min_inlier_ratio
        options.mapper.init_min_tri_angle = init_min_tri_angle
        apply_to_incremental(options, intrinsics)
        hold_distortion(options)
        with pycolmap.Database.open(database_path) as database:
            total = database.num_images()
        models: dict = {}
        verified = functools.cache(lambda: verified_matches(database_path))
        for attempt in range(max(1, attempts)):
            options.random_seed = seed + attempt
            with tqdm(total=total, desc="mapping (images registered)", unit="img", disable=not progress) as bar:
                def registered(count: int, bar=bar) -> None:  # COLMAP starts a new model when one ends: at most all
                    bar.update(min(count, total - bar.n))

                trial = pycolmap.incremental_mapping(
                    database_path, image_dir, scratch / f"raw{attempt}", options,
                    initial_image_pair_callback=lambda: registered(2), next_image_callback=lambda: registered(1),
                )
            if _rank(trial) > _rank(models):
                models = trial
            problem = why_map_again(models, total, verified) if attempt + 1 < attempts else None
            if problem is None:
                break
            log.info(f"  {problem}; mapping again with seed {seed + attempt + 1}")
    elif mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        if hasattr(options, "random_seed"):
            options.random_seed = seed
        apply_to_bundle_adjustment(options.mapper.bundle_adjustment, intrinsics)
        mapped_database = calibrated_view_graph(database_path, scratch / "raw-calibrated", seed)
        models = pycolmap.global_mapping(mapped_database, image_dir, scratch / "raw", options)
        min_points = max(abs_pose_min_inliers, GLOBAL_MIN_IMAGE_POINTS)
        for model in models.values():
            dropped = drop_weak_images(model, min_points)
            if dropped:
                log.info(f"  global mapper: left out {len(dropped)} image(s) seen by fewer than {min_points} of its 3D "
                         f"points ({', '.join(dropped)}); too few to trust a pose no 2D-3D check confirmed")
    else:
        raise D2sfmError(f"mapper {mapper!r} is unknown; use one of {', '.join(MAPPERS)}")
    for raw in scratch.glob("raw*"):
        shutil.rmtree(raw, ignore_errors=True)
    # COLMAP keeps a run's only model whatever its size (two images, seven points): not a result
    kept = [model for model in models.values() if model.num_reg_images() >= min_model_size]
    ordered = drop_contained_models(sorted(kept, key=_size, reverse=True))
    if not ordered:
        shutil.rmtree(scratch, ignore_errors=True)
        return []
    if mapper == "incremental":
        for model in ordered:  # the distortion held while mapping, estimated now that every image is in
            adjust_and_filter(model, options.mapper.filter_max_reproj_error, options.mapper.filter_min_tri_angle,
                              intrinsics)
    for index, model in enumerate(ordered):
        folder = scratch / str(index)
        folder.mkdir()
        model.write_text(folder) if text else model.write_binary(folder)
    (scratch / MAPPED_FROM).write_text(json.dumps(mapped_from or {}, indent=2))
    replace_folder(scratch, output_dir)
    return ordered


MAPPED_FROM = "mapped_from.json"  # beside the models: the database (its build token) they were mapped from


def hold_distortion(options: pycolmap.IncrementalPipelineOptions) -> None:
    """The incremental mapper's options with the cameras' extra parameters (distortion) held while it maps; the
    final ``bundle_adjust`` of ``run_mapping`` estimates them."""
    options.ba_refine_extra_params = False
    options.mapper.abs_pose_refine_extra_params = False


def bundle_adjust(model: pycolmap.Reconstruction, intrinsics: IntrinsicsRefinement = COLMAP_REFINEMENT,
                  hold_poses: bool = False, cauchy_px: float | None = None) -> None:
    """COLMAP's global bundle adjustment (every registered image, the gauge fixed by two cameras), called through
    the adjuster itself: ``pycolmap.bundle_adjustment`` computes the same but turns COLMAP's INFO log on for the
    rest of the process (pycolmap 4.2), and printing is --verbose's choice. ``cauchy_px``: a Cauchy loss of that
    scale instead of the squared error, so that observations far off cannot pull the poses."""
    pycolmap.ObservationManager(model).filter_observations_with_negative_depth()
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in model.reg_image_ids():
        config.add_image(image_id)
        if hold_poses:  # known poses (triangulated at them): only the points move, and nothing to fix the gauge
            config.set_constant_rig_from_world_pose(model.image(image_id).frame_id)
    if not hold_poses:
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    apply_to_bundle_adjustment(options, intrinsics)
    if cauchy_px is not None:
        options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
        options.ceres.loss_function_scale = cauchy_px
    pycolmap.create_default_bundle_adjuster(options, config, model).solve()
    model.update_point_3d_errors()


# COLMAP's iterative global refinement: at most this many adjust-and-filter rounds, stopping once a filter removes
# under this share of the observations (its ba_global_max_refinements and ba_global_max_refinement_change)
ADJUST_ROUNDS = 5
ADJUST_SETTLED_SHARE = 0.0005


def adjust_and_filter(model: pycolmap.Reconstruction, max_reprojection_error: float, min_triangulation_angle: float,
                      intrinsics: IntrinsicsRefinement = COLMAP_REFINEMENT, hold_poses: bool = False,
                      rounds: int = ADJUST_ROUNDS, first_cauchy_px: float | None = None) -> int:
    """Bundle adjustment, then COLMAP's point filter, again while the filter still removes observations; returns
    the observations removed. One round is not enough: the squared error lets the observations the filter is about
    to remove pull every pose first, and nothing moves the poses back (entry-P10 after the model refinement:
    2,000 of 6,400 points filtered after the adjustment; adjusting again without them took the median position
    error from 10.6 to 8.5 mm). ``first_cauchy_px``: the first round with a Cauchy loss of that scale, so the
    filter judges observations against poses the outliers did not pull; the later rounds, on what the filter
    kept, are plain least squares (entry-P10: 6.2 mm over four mapping seeds, against 6.8 to 8.8 without)."""
    removed = 0
    for round_index in range(max(1, rounds)):
        bundle_adjust(model, intrinsics, hold_poses=hold_poses, cauchy_px=first_cauchy_px if round_index == 0 else None)
        observations = model.compute_num_observations()
        filtered = pycolmap.ObservationManager(model).filter_all_points3D(max_reprojection_error,
                                                                         min_triangulation_angle)
        removed += filtered
        if filtered <= ADJUST_SETTLED_SHARE * max(observations, 1) and (round_index or first_cauchy_px is None):
            break
    return removed


def calibrated_view_graph(database_path: str | os.PathLike, folder: Path, seed: int) -> Path:
    """The database the global mapper reads. Rotation averaging needs each pair's relative pose, which the
    verification estimates (an essential matrix) only between cameras with a known focal length; a camera without
    one (no EXIF, no --camera-params) leaves its pairs with a fundamental matrix, decomposed at COLMAP's guessed
    focal (1.2x the larger side). On 250 rendered views of the courtyard whose true focal is 0.8x, the global
    mapper then kept 135-142 images, placed 4.6-8.6 degrees wrong (median). So where a camera has no prior focal,
    pycolmap's view-graph calibration first estimates the focal lengths from the fundamental matrices and
    upgrades the pairs it can to calibrated relative poses: 239-247 images, 0.8-1.3 degrees (docs/benchmarks.md,
    "Incremental or global mapping"). It rewrites the two-view geometries and cameras, so it runs on a copy in
    ``folder``: database.db stays what verification wrote."""
    with pycolmap.Database.open(database_path) as database:
        uncalibrated = [camera for camera in database.read_all_cameras() if not camera.has_prior_focal_length]
    if not uncalibrated:
        return Path(database_path)
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "database.db"
    shutil.copyfile(database_path, copy)
    options = pycolmap.ViewGraphCalibrationOptions()
    options.random_seed = seed
    log.info(f"  {len(uncalibrated)} camera(s) without a known focal length: calibrating the view graph first")
    if not pycolmap.calibrate_view_graph(copy, options):
        log.info("  view-graph calibration failed; mapping with the pairs' fundamental matrices as they are")
    return copy


def mapped_from(sparse_dir: str | os.PathLike) -> dict | None:
    """What ``run_mapping`` recorded beside the models (None for a folder an earlier release wrote)."""
    path = Path(sparse_dir) / MAPPED_FROM
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (ValueError, OSError):
        return {}  # unreadable: matches nothing, so the models are mapped again


def drop_contained_models(ordered: list[pycolmap.Reconstruction]) -> list[pycolmap.Reconstruction]:
    """Leave out a model whose registered images are all in a larger one: COLMAP starts another model from a
    second initial pair inside an image set it has already reconstructed (Sacre Coeur: a 4-image model of images
    all in the 10-image one), which adds nothing a user can use and would be drawn, refined and reported."""
    kept: list[pycolmap.Reconstruction] = []
    seen: list[set[str]] = []
    for model in ordered:
        names = {model.image(image_id).name for image_id in model.reg_image_ids()}
        if any(names <= larger for larger in seen):
            log.info("  left out a model of %d images, all registered in a larger model", len(names))
            continue
        kept.append(model)
        seen.append(names)
    return kept


def drop_weak_images(model: pycolmap.Reconstruction, min_points: int) -> list[str]:
    """Deregister images that observe fewer than ``min_points`` of the model's 3D points; returns their names.

    The global mapper places every image it can reach by rotation averaging, including ones held by a handful of
    points: on the synthetic courtyard, some verification runs leave two images with 11 and 14 points, placed 19
    and 45 degrees wrong, and with refined keypoints one image kept 26 points placed 12.8 degrees wrong (the
    incremental mapper places it within 0.1 degree). The incremental mapper confirms each image it registers by
    ``abs_pose_min_inliers`` 2D-3D RANSAC inliers; the global mapper confirms nothing, so at least COLMAP's own
    number (30) is asked here."""
    weak = sorted((image.name, image.frame_id) for image in model.images.values()
                  if image.has_pose and image.num_points3D < min_points)
    for frame_id in dict.fromkeys(frame_id for _, frame_id in weak):  # a frame holds the images of one rig shot
        model.deregister_frame(frame_id)
    return [name for name, _ in weak]


def _size(model: pycolmap.Reconstruction) -> tuple[int, int]:
    """Images, then 3D points: how models are ranked (the best is written as sparse/0)."""
    return model.num_reg_images(), model.num_points3D()


def _rank(models: dict) -> tuple[int, int]:
    """The size of a mapping run's best model: what the retries compare."""
    return max(map(_size, models.values()), default=(0, 0))


@dataclass(frozen=True)
class VerifiedMatches:
    """What geometric verification kept, as the retry rule reads it."""

    keypoints: dict[int, int]  # image id -> its keypoints with at least one verified match
    pairs: dict[tuple[int, int], int]  # (image id, image id) -> verified matches (inliers) of the pair


def why_map_again(models: dict, total_images: int, verified: Callable[[], VerifiedMatches]) -> str | None:
    """Why the best model of a mapping run is worth another run with the next seed, or None when it is not.
    ``verified`` gives ``verified_matches`` of the database (only called when needed)."""
    if not models:
        return "no model"
    largest = max(models.values(), key=_size)
    if largest.num_reg_images() < RETRY_BELOW_SHARE * total_images:
        return f"the largest model holds {largest.num_reg_images()} of {total_images} images"
    share = triangulated_share(largest, verified().keypoints)
    if share < RETRY_BELOW_TRIANGULATED:
        return (f"the largest model triangulates {100 * share:.0f}% of its images' verified keypoints "
                f"({largest.num_points3D()} points)")
    reachable = left_out_but_linked(largest, verified().pairs)
    if reachable:
        return (f"the largest model left out {len(reachable)} image(s) with at least {RETRY_LINKED_MATCHES} verified "
                f"matches to its images")
    return None


def left_out_but_linked(model: pycolmap.Reconstruction, pairs: dict[tuple[int, int], int]) -> list[int]:
    """Ids of the images the model did not register that share at least RETRY_LINKED_MATCHES verified matches
    with the images it did (an image with few links is left out for a reason; another run will not place it)."""
    registered = set(model.reg_image_ids())
    links: dict[int, int] = {}
    for (first, second), count in pairs.items():
        if (first in registered) != (second in registered):
            left_out = second if first in registered else first
            links[left_out] = links.get(left_out, 0) + count
    return sorted(image_id for image_id, count in links.items() if count >= RETRY_LINKED_MATCHES)


def verified_matches(database_path: str | os.PathLike) -> VerifiedMatches:
    """Per image, how many keypoints have at least one geometrically verified match; per pair, its inliers."""
    with pycolmap.Database.open(database_path) as database:
        pair_ids, geometries = database.read_two_view_geometries()
    indices: dict[int, list[np.ndarray]] = {}
    pairs: dict[tuple[int, int], int] = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        inliers = np.asarray(geometry.inlier_matches)
        if len(inliers):
            first, second = pycolmap.pair_id_to_image_pair(pair_id)
            pairs[first, second] = len(inliers)
            indices.setdefault(first, []).append(inliers[:, 0])
            indices.setdefault(second, []).append(inliers[:, 1])
    keypoints = {image_id: len(np.unique(np.concatenate(parts))) for image_id, parts in indices.items()}
    return VerifiedMatches(keypoints, pairs)


def verified_keypoints(database_path: str | os.PathLike) -> dict[int, int]:
    """Image id -> how many of its keypoints have at least one geometrically verified match."""
    return verified_matches(database_path).keypoints


def triangulated_share(model: pycolmap.Reconstruction, verified: dict[int, int]) -> float:
    """Share of the registered images' verified keypoints that the model gave a 3D point. A healthy incremental
    model triangulates most of them; a thin one (a poor initial pair, then images registered on few points)
    only a small part."""
    image_ids = model.reg_image_ids()
    triangulated = sum(model.image(image_id).num_points3D for image_id in image_ids)
    return triangulated / max(sum(verified.get(image_id, 0) for image_id in image_ids), 1)


def model_folders(sparse_dir: str | os.PathLike) -> list[Path]:
    """The model folders 0, 1, ... of a sparse folder, largest model first (none if it does not exist)."""
    if not Path(sparse_dir).is_dir():
        return []
    folders = [p for p in Path(sparse_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(folders, key=lambda p: int(p.name))


def read_models(sparse_dir: str | os.PathLike) -> list[pycolmap.Reconstruction]:
    return [read_model(folder) for folder in model_folders(sparse_dir)]


def model_statistics(model: pycolmap.Reconstruction) -> dict:
    """The ETH local-feature benchmark's SfM columns."""
    return {
        "registered_images": model.num_reg_images(),
        "points3D": model.num_points3D(),
        "observations": model.compute_num_observations(),
        "mean_track_length": model.compute_mean_track_length(),
        "mean_reprojection_error": model.compute_mean_reprojection_error(),
    }
