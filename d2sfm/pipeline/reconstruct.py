"""The reconstruct flow: photos to features, pairs, matches, a verified database, optional keypoint refinement, models,
their refinement, a picture and dense points, each stage skipped when its output is complete and current.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pycolmap
import torch

from d2sfm.config import DenseConfig, MappingConfig, ReconstructionConfig
from d2sfm.errors import D2sfmError
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import atomic_database, remove_sqlite_side_files
from d2sfm.io.h5 import list_entries
from d2sfm.io.images import list_images
from d2sfm.matching.pairs import choose_pairs, read_pairs, write_pairs
from d2sfm.pipeline.features import (
    check_extraction_settings,
    extract_missing,
    match_missing,
    match_settings,
    unmatched_pairs,
)
from d2sfm.pipeline.known_poses import triangulate_at_known_poses
from d2sfm.pipeline.stage_settings import PENDING, StageSettings, digest
from d2sfm.pipeline.stages import RunFolder, Stages
from d2sfm.refinement.database_refinement import (
    drop_database_refined_unasked,
    is_refined,
    refine_database,
    refinement_record,
)
from d2sfm.refinement.model_refinement import (
    ModelRefineSettings,
    model_refinement_record,
    recover_interrupted_models,
    refine_model_folder,
)
from d2sfm.runtime.device import resolve_device
from d2sfm.runtime.run_lock import folder_lock
from d2sfm.sfm.cameras import intrinsics_refinement, parse_camera_params
from d2sfm.sfm.database import (
    create_database,
    database_problem,
    database_token,
    import_and_verify,
)
from d2sfm.sfm.dense import FUSED, MESH, cuda_problem, run_dense, workspace_path
from d2sfm.sfm.mapping import (
    mapped_from,
    model_folders,
    model_statistics,
    read_models,
    run_mapping,
)
from d2sfm.viz.model_picture import write_model_picture

log = logging.getLogger("d2sfm")

def print_table(stats: dict) -> None:
    rows = [("images (readable / given)", f"{stats['images_readable']} / {stats['images_given']}"),
            ("pairs matched / verified", f"{stats['pairs']} / {stats['verification']['verified_pairs']}")]
    if stats.get("refinement"):
        refinement = stats["refinement"]
        rows.append(("keypoints refined / in tracks (median shift)", f"{refinement['keypoints_moved']} / "
                     f"{refinement['keypoints_in_tracks']} ({refinement['median_shift_px']:.2f} px)"))
    for index, record in enumerate(stats.get("model_refinement") or []):
        if record:
            rows.append((f"model {index}: observations aligned / dropped / added", f"{record['observations_aligned']}"
                         f" / {record['observations_dropped']} / {record['observations_added']}"))
    for index, model in enumerate(stats["models"]):
        rows += [(f"model {index}: registered images", model["registered_images"]),
                 (f"model {index}: 3D points", model["points3D"]),
                 (f"model {index}: observations", model["observations"]),
                 (f"model {index}: mean track length", f"{model['mean_track_length']:.2f}"),
                 (f"model {index}: mean reprojection error (px)", f"{model['mean_reprojection_error']:.3f}")]
    if "dense_points" in stats:
        rows.append(("dense points", stats["dense_points"]))
    peaks = stats.get("stage_peak_memory_mb", {})
    rows += [(f"{stage}: time (s) / peak memory (MiB)", f"{seconds} / {peaks.get(stage, 'n/a')}")
             for stage, seconds in stats["stage_seconds"].items()]
    width = max(len(str(label)) for label, _ in rows)
    for label, value in rows:
        log.info(f"  {label:<{width}}  {value}")


def refine_models(sparse: Path, image_dir: Path, device: torch.device, stages: Stages, progress: bool,
                  settings: ModelRefineSettings) -> None:
    """After mapping: every model refined (patch alignment of each point's observations, optionally completed
    tracks, bundle adjustment); a model refined earlier keeps its record and is skipped."""
    pending = [folder for folder in model_folders(sparse) if model_refinement_record(folder) is None]

    def refine() -> None:
        for folder in pending:
            summary = refine_model_folder(folder, image_dir, device, settings, progress=progress)
            log.info(f"  model {folder.name}: {summary.describe()}")

    stages.run("refine-model", not pending, refine)


def picture_is_current(picture: Path, model_dir: Path) -> bool:
    """model.png exists and was drawn after the model it shows was written."""
    written = [path.stat().st_mtime for path in model_dir.glob("images.*")]
    return picture.is_file() and bool(written) and picture.stat().st_mtime >= max(written)


def dense_stage(config: DenseConfig, paths: dict[str, Path], image_dir: Path, stages: Stages,
                progress: bool) -> dict:
    """MVS of the largest model into dense/, skipped when done (a mesh asked for later is added on its own)."""
    def dense() -> dict:
        return run_dense(paths["sparse"] / "0", image_dir, paths["dense"], config.max_image_size, mesh=config.mesh,
                         mesh_trim=config.mesh_trim, progress=progress)

    result: dict = {}
    done = (paths["dense"] / FUSED).is_file() and (not config.mesh or (paths["dense"] / MESH).is_file())
    stages.run("dense", done, lambda: result.update(dense()))
    return result or dense()  # done earlier: run_dense checks it against this run's inputs and reads its counts


PAIR_METHODS = ("auto", "exhaustive", "sequential", "retrieval")


RESUME_KEYS = ("failed_images", "verification", "stage_settings", PENDING, "stage_seconds",
               "stage_peak_memory_mb")
SETTINGS_ORDER = ("pairs", "match", "database", "mapping")  # a change redoes its stage and every later one


def stage_settings(config: ReconstructionConfig, features_file: Path | None, camera_mode: str,
                   readable: list[str]) -> dict[str, dict]:
    """What each stage's output depends on beyond the outputs before it, recorded in stats.json when it finishes:
    a rerun with other settings redoes that stage and the ones after it instead of keeping a result that no longer
    matches the command (extraction's own settings are checked in features.h5)."""
    mapping = config.mapping
    if config.pairs.method in PAIR_METHODS:
        pairs = {"pairs": config.pairs.method, "images": digest("\n".join(readable))}
        if config.pairs.method in ("auto", "retrieval"):
            pairs["top_k"] = config.pairs.top_k
        if config.pairs.method == "sequential":
            pairs["overlap"] = config.pairs.overlap
    else:  # a pair list: its content, wherever it lies
        pair_file = Path(config.pairs.method)
        pairs = {"pairs": "file", "sha256": digest(pair_file.read_bytes()) if pair_file.is_file() else str(pair_file)}
    # recorded only when not the default, so that a scene of an earlier release is not mapped again for them
    params = parse_camera_params(mapping.camera_model, mapping.camera_params)
    known_intrinsics = {"camera_params": params} if params else {}
    refined_intrinsics = {"refine_intrinsics": mapping.refine_intrinsics} if mapping.refine_intrinsics != "colmap" \
        else {}
    known_poses = {"known_poses": known_poses_record(Path(mapping.known_poses))} if mapping.known_poses else {}
    # the model stage refines what mapping wrote: another choice maps again
    completion = {"complete_tracks": True} if config.refine.enabled and config.refine.complete_tracks else {}
    # the global mapper calibrates the view graph first (run_mapping): a model it mapped before that, from pairs
    # decomposed at a guessed focal length, is mapped again
    calibration = {"view_graph_calibration": True} if config.mapping.mapper == "global" else {}
    features = {"features": "scene"}
    if features_file is not None:  # the user's file: another file, or the same one written again, is other features
        features = {"features": str(features_file.resolve()), "modified_ns": features_file.stat().st_mtime_ns}
    return {
        "pairs": pairs,
        "match": {**features, **match_settings(config.matching)},
        "database": {"camera_mode": camera_mode, "camera_model": config.mapping.camera_model, **known_intrinsics},
        "mapping": {"mapper": mapping.mapper, "min_model_size": mapping.min_model_size, "text": mapping.text,
                    "abs_pose_min_inliers": mapping.abs_pose_min_inliers,
                    "abs_pose_min_inlier_ratio": mapping.abs_pose_min_inlier_ratio,
                    "init_min_tri_angle": mapping.init_min_tri_angle, "mapper_attempts": mapping.attempts,
                    **refined_intrinsics, **known_poses, **completion, **calibration},
    }


def known_poses_record(truth: Path) -> dict:
    """Where the known poses come from and what they are (a changed file maps again)."""
    files = sorted(path for path in truth.iterdir() if path.is_file()) if truth.is_dir() else []
    return {"path": str(truth.resolve()), "sha256": digest(b"".join(path.name.encode() + path.read_bytes()
                                                                    for path in files))}


def camera_record(mapping: MappingConfig, models: list[pycolmap.Reconstruction]) -> dict:
    """What the cameras were given and what the largest model ended with (its cameras' COLMAP parameters)."""
    given = parse_camera_params(mapping.camera_model, mapping.camera_params)
    final = [{"camera_id": camera_id, "model": camera.model.name, "params": [round(v, 6) for v in camera.params]}
             for camera_id, camera in sorted(models[0].cameras.items())] if models else []
    return {"camera_model": mapping.camera_model, "given_params": given or None,
            "refine_intrinsics": mapping.refine_intrinsics, "largest_model": final}


@dataclass
class ReconstructionResult:
    """What ``reconstruct_scene`` made: the models (largest first, as in sparse/0, 1, ...) and the statistics it
    wrote to stats.json."""

    scene: Path
    models: list[pycolmap.Reconstruction]
    statistics: dict

    @property
    def largest(self) -> pycolmap.Reconstruction:
        return self.models[0]


def reconstruct_scene(scene: str | Path, config: ReconstructionConfig | None = None, *,
                      images: str | Path | None = None, features: str | Path | None = None,
                      demo: bool = False) -> ReconstructionResult:
    """Photos in ``scene/images`` (or ``images``) to COLMAP models under ``scene``; finished stages are skipped,
    so a rerun resumes. ``features``: a features.h5 of d2sfm or hloc to use instead of extracting (read, never
    written). ``demo``: render the embedded synthetic scene into ``scene`` first and check the recovered cameras
    against the truth (``statistics["demo_check"]``). Two runs cannot share ``scene``: the second stops at once."""
    config = config or ReconstructionConfig()
    scene = Path(scene)
    image_dir = Path(images) if images is not None else scene / "images"
    features_file = Path(features) if features is not None else None
    if config.dense.mesh and not config.dense.enabled:
        raise D2sfmError("--mesh meshes the dense points: add --dense")
    parse_camera_params(config.mapping.camera_model, config.mapping.camera_params)  # a wrong list fails now
    intrinsics_refinement(config.mapping.refine_intrinsics)
    if config.mapping.known_poses and not Path(config.mapping.known_poses).is_dir():
        raise D2sfmError(f"{config.mapping.known_poses}: no such folder of known poses; give a folder of Strecha "
                         ".camera files or a COLMAP model")
    if not demo and not image_dir.is_dir():
        raise D2sfmError(f"{image_dir}: no such image folder; put the photos in scene/images/ or pass --images DIR")
    if features_file is not None and not features_file.is_file():
        raise D2sfmError(f"{features_file}: no such features file; give a features.h5 of d2sfm or hloc")
    with folder_lock(scene):
        return _reconstruct(scene, config, image_dir, features_file, demo)


def _reconstruct(scene: Path, config: ReconstructionConfig, image_dir: Path, features_file: Path | None,
                 demo: bool) -> ReconstructionResult:
    """The stages, with ``scene`` held by this process."""
    camera_mode = config.mapping.camera_mode or ("single" if demo else "auto")
    dense_problem = cuda_problem() if config.dense.enabled and not (scene / "dense" / FUSED).is_file() else None
    if dense_problem:
        log.warning(f"warning: {dense_problem}")
    if demo and not (scene / "ground_truth").is_dir():
        from d2sfm.synthetic.scene import render_scene

        log.info(f"rendering the synthetic demo scene into {scene}")
        render_scene(scene)
    if not image_dir.is_dir():
        raise D2sfmError(f"{image_dir}: no such image folder; put the photos in scene/images/ or pass --images DIR")
    names = list_images(image_dir)
    if len(names) < 2:
        raise D2sfmError(f"{image_dir}: only {len(names)} image; a reconstruction needs at least two")
    paths = {key: scene / name for key, name in [
        ("features", "features.h5"), ("pairs", "pairs.txt"), ("matches", "matches.h5"),
        ("database", "database.db"), ("sparse", "sparse"), ("dense", "dense"), ("stats", "stats.json"),
        ("picture", "model.png")]}
    if features_file is not None:  # the user's file: read, never extracted into or deleted
        paths["features"] = features_file
    if config.run.overwrite:
        for key in ("pairs", "matches", "database", "sparse", "dense", "stats", "picture") + (
                () if features_file else ("features",)):
            shutil.rmtree(paths[key]) if paths[key].is_dir() else paths[key].unlink(missing_ok=True)
        remove_sqlite_side_files(paths["database"])
        shutil.rmtree(workspace_path(paths["dense"]), ignore_errors=True)
    # stats.json is the scene's record: after each stage what a rerun needs to skip the stages done so far (an
    # interrupted mapping must not cost the verification again), at the end the statistics as well
    run = RunFolder(scene, record=paths["stats"].name, carried=RESUME_KEYS)
    failures: list[tuple[str, str]] = [tuple(f) for f in run.state.get("failed_images", [])]
    run.state.update(failed_images=failures, verification=run.state.get("verification"))
    stages = run.stages
    progress = config.run.progress

    def extract() -> None:
        failures[:] = extract_missing(config.features, config.run, image_dir, names, paths["features"])[1]
        for _, error in failures:
            log.info(f"  skipped: {error}")

    done_names = set(list_entries(paths["features"]))
    if features_file is not None and not set(names) <= done_names:
        missing = sorted(set(names) - done_names)
        raise D2sfmError(f"{features_file}: has no features for {len(missing)} of the {len(names)} images (first: "
                         f"{missing[0]}); extract them, or leave out --features")
    if features_file is None:
        check_extraction_settings(config.features, paths["features"], progress)
        stages.run("extract", all(n in done_names for n in names), extract)
    else:
        stages.run("extract", True, extract, skipped_because=f"features read from {features_file}")
    extracted = set(list_entries(paths["features"]))
    readable = [n for n in names if n in extracted]
    if len(readable) < 2:
        raise D2sfmError(f"{image_dir}: {len(readable)} readable image(s) of {len(names)}; need at least two")

    settings = StageSettings(run.state, stage_settings(config, features_file, camera_mode, readable), SETTINGS_ORDER)
    redo, finished = settings.redo, settings.finished

    def make_pairs() -> None:
        write_pairs(paths["pairs"], choose_pairs(config.pairs.method, readable, paths["features"], config.pairs.top_k,
                                                 config.pairs.overlap))
        finished("pairs")

    stages.run("pairs", paths["pairs"].is_file() and "pairs" not in redo, make_pairs)
    finished("pairs")
    pairs = read_pairs(paths["pairs"], known_names=readable)
    if settings.own_settings_changed("match"):  # other features or matching options: all matches differ
        paths["matches"].unlink(missing_ok=True)

    def match() -> None:
        match_missing(config.matching, config.run, paths["features"], pairs, paths["matches"], keep_unrecorded=True)
        finished("match")

    stages.run("match", not unmatched_pairs(pairs, paths["matches"]), match)
    finished("match")

    drop_database_refined_unasked(paths["database"], config.refine.enabled, config.refine.method)
    problem = database_problem(paths["database"], readable) if paths["database"].is_file() else None
    if problem and (paths["sparse"] / "0").is_dir():
        raise D2sfmError(f"{paths['database']}: {problem}, but {paths['sparse']} holds models mapped from it; delete "
                         f"{paths['database'].name} to build it again from the features and matches (the models are "
                         "then mapped again), or pass --overwrite to redo the whole scene")
    if problem:
        log.info(f"  {paths['database'].name}: {problem}; building it again")

    def build_database() -> None:
        with atomic_database(paths["database"]) as scratch:
            ids = create_database(scratch, image_dir, readable, camera_mode, config.mapping.camera_model,
                                  config.mapping.camera_params)
            verification = import_and_verify(scratch, ids, paths["features"], paths["matches"], pairs, progress)
            run.state["verification"] = verification.__dict__
        finished("database")

    database_done = paths["database"].is_file() and not problem and run.state["verification"] is not None
    stages.run("database", database_done and "database" not in redo, build_database)
    finished("database")

    def refine() -> None:
        weights = resolve_weights(config.features.weights, progress=progress)
        summary = refine_database(paths["database"], image_dir, weights, resolve_device(config.run.device),
                                  config.refine.settings(), progress=progress)
        log.info(f"  {summary.describe()}")

    if config.refine.enabled:
        stages.run("refine", is_refined(paths["database"]), refine)

    source = {"database": database_token(paths["database"])}

    def mapping() -> None:
        options = config.mapping
        if options.known_poses:
            models = triangulate_at_known_poses(paths["database"], image_dir, paths["sparse"], options.known_poses,
                                                mapped_from=source)
        else:
            models = run_mapping(paths["database"], image_dir, paths["sparse"], options.mapper, options.min_model_size,
                                 text=options.text, progress=progress,
                                 abs_pose_min_inliers=options.abs_pose_min_inliers,
                                 abs_pose_min_inlier_ratio=options.abs_pose_min_inlier_ratio,
                                 init_min_tri_angle=options.init_min_tri_angle, attempts=options.attempts,
                                 mapped_from=source, intrinsics=intrinsics_refinement(options.refine_intrinsics))
        if not models:
            verification = run.state["verification"]
            every_pair = len(pairs) >= len(readable) * (len(readable) - 1) // 2
            advice = ("add photos (--min-model-size allows no model of fewer images)"
                      if len(readable) < config.mapping.min_model_size else
                      "add more overlapping photos" if every_pair else
                      "try more pairs (--pairs exhaustive) or more overlapping photos")
            raise D2sfmError(
                f"mapping found no model of at least {config.mapping.min_model_size} images: "
                f"{verification['verified_pairs']} of {verification['pairs']} pairs verified with a median of "
                f"{verification['median_inliers']:.0f} inliers; {advice}"
            )
        for stale in (paths["dense"], workspace_path(paths["dense"])):  # made from the models just replaced
            shutil.rmtree(stale, ignore_errors=True)
        finished("mapping")

    recover_interrupted_models(paths["sparse"])
    recorded_source = mapped_from(paths["sparse"])
    models_current = (paths["sparse"] / "0").is_dir() and (
        recorded_source == source if recorded_source is not None else source["database"] is None)
    stages.run("mapping", models_current and "mapping" not in redo, mapping)
    finished("mapping")
    if config.refine.enabled:
        refine_models(paths["sparse"], image_dir, resolve_device(config.run.device), stages, progress,
                      ModelRefineSettings(intrinsics=config.mapping.refine_intrinsics,
                                          complete_tracks=config.refine.complete_tracks,
                                          hold_poses=bool(config.mapping.known_poses)))
    stages.run("picture", picture_is_current(paths["picture"], paths["sparse"] / "0"), lambda: write_model_picture(
        paths["sparse"] / "0", paths["picture"], paths["database"], readable))
    models = read_models(paths["sparse"])
    stats = {
        "images_given": len(names), "images_readable": len(readable),
        "failed_images": [list(f) for f in failures], "pairs": len(pairs), "verification": run.state["verification"],
        "models": [model_statistics(model) for model in models],
        "refinement": refinement_record(paths["database"]),
        "model_refinement": [model_refinement_record(folder) for folder in model_folders(paths["sparse"])],
        "cameras": camera_record(config.mapping, models),
    }
    if demo:
        from d2sfm.evaluation.ground_truth import demo_check

        stats["demo_check"] = demo_check(models[0], scene / "ground_truth")
    stats["stage_settings"] = settings.recorded
    run.state = stats  # the record is now the result: the sparse one, saved before dense runs
    run.save()
    try:  # the summary is printed even when dense fails: the sparse result stands
        if config.dense.enabled:
            stats["dense"] = dense_stage(config.dense, paths, image_dir, stages, progress)
            stats["dense_points"] = stats["dense"]["dense_points"]
            run.save()
    finally:
        log.info(f"wrote {scene}: {len(models)} model(s) in {paths['sparse']} (picture: {paths['picture']}), "
                 f"statistics in {paths['stats']}")
        print_table(stats)
        if demo:
            check = stats["demo_check"]
            log.info(f"  demo check: {check['registered']} of {len(names)} cameras registered; "
                     + (f"max rotation error {check['max_rotation_error_deg']:.3f} deg, max position error "
                        f"{100 * check['max_position_error_rel']:.3f}% of the scene size" if check["aligned"]
                        else "alignment to the truth failed"))
    return ReconstructionResult(scene, models, stats)
