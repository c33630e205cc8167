"""Aachen Day-Night (v1.0, v1.1): the Long-Term Visual Localization benchmark's local-feature protocol.

The steps of its ``local_feature_evaluation/reconstruction_pipeline*.py``, with pycolmap instead of the COLMAP
executable and D2 features from d2sfm:

1. start from the benchmark's ``database.db`` (old COLMAP schema: every image and camera, no features) and
   ``image_pairs_to_match.txt``;
2. the empty reference model: NVM camera centres turned into COLMAP translations, ``database_intrinsics.txt``;
3. D2 features of every image named in the pairs, keypoints at the original resolution;
4. keypoints into the database, mutual-nearest-neighbour matches of the listed pairs, geometric verification;
5. triangulation at the fixed database poses and intrinsics (``point_triangulator``);
6. registration of the queries at fixed intrinsics (``image_registrator``);
7. ``Aachen_eval_[d2sfm].txt`` (v1.1: ``Aachen_v1_1_eval_[d2sfm].txt``): ``name qw qx qy qz tx ty tz``.

With ``--pairs FILE`` (query-database pairs from image retrieval, as hloc's ``pairs-query-netvlad50.txt``) the
queries of the ``--queries`` sets are matched to their retrieved images instead, while the database model is still
triangulated from the protocol's database pairs (or ``--db-pairs``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pycolmap

from d2sfm.config import AachenConfig
from d2sfm.errors import D2sfmError
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import atomic_database, write_text_atomic
from d2sfm.io.model_files import read_model
from d2sfm.localization.pose_scores import THRESHOLD_PRESETS
from d2sfm.localization.poses import pose_from_rigid3d
from d2sfm.localization.reference_model import Intrinsics, build_reference_model, read_intrinsics, read_nvm_poses
from d2sfm.localization.registration import register_queries, registration_options
from d2sfm.localization.submission import QueryOutcome, finish_localization, ground_truth_if_present
from d2sfm.matching.pairs import Pair, read_pairs, unique_pairs
from d2sfm.pipeline.features import EARLIER_MATCHING, extract_and_match, match_settings
from d2sfm.pipeline.stage_settings import StageSettings, digest, pairs_digest
from d2sfm.pipeline.stages import RunFolder
from d2sfm.refinement.database_refinement import (
    drop_database_refined_unasked,
    is_refined,
    refine_localization_database,
    refinement_record,
)
from d2sfm.runtime.device import resolve_device
from d2sfm.sfm.database import import_and_verify, read_image_ids
from d2sfm.sfm.triangulation import triangulate_fixed

log = logging.getLogger("d2sfm")

README = "datasets/aachen.md"
QUERY_KINDS = ("day", "night")
AACHEN_STAGES = ("match", "database", "register")  # whose settings are recorded: a change redoes what follows
GROUND_TRUTH = "query_ground_truth.txt"  # not published by the benchmark; d2sfm scores against it when present


@dataclass(frozen=True)
class AachenLayout:
    """Where the protocol's files live in a dataset folder, per version."""

    root: Path
    version: str

    @property
    def suffix(self) -> str:
        return "" if self.version == "1.0" else "_v1_1"

    def _protocol_file(self, name: str) -> Path:
        """At the dataset root (the benchmark's README) or in a ``local_feature_evaluation/`` folder beside it."""
        beside = self.root / "local_feature_evaluation" / name
        return beside if beside.exists() and not (self.root / name).exists() else self.root / name

    @property
    def database(self) -> Path:
        return self._protocol_file(f"database{self.suffix}.db")

    @property
    def pairs(self) -> Path:
        return self._protocol_file(f"image_pairs_to_match{self.suffix}.txt")

    @property
    def images(self) -> Path:
        return self.root / "images" / "images_upright"

    @property
    def nvm(self) -> Path:
        if self.version == "1.0":
            return self.root / "3D-models" / "aachen_cvpr2018_db.nvm"
        return self.root / "3D-models" / "aachen_v_1_1" / "aachen_v_1_1.nvm"

    @property
    def intrinsics(self) -> Path:
        if self.version == "1.0":
            return self.root / "3D-models" / "database_intrinsics.txt"
        return self.root / "3D-models" / "aachen_v_1_1" / "database_intrinsics_v1_1.txt"

    def query_list(self, kind: str) -> Path:
        return self.root / "queries" / f"{kind}_time_queries_with_intrinsics.txt"

    @property
    def submission(self) -> str:
        return f"Aachen{self.suffix}_eval_[d2sfm].txt"

    @property
    def thresholds(self) -> str:
        return "aachen" if self.version == "1.0" else "aachen_v1_1"

    def require(self, *paths: Path) -> None:
        for path in paths:
            if not path.exists():
                raise D2sfmError(f"{path}: missing; the Aachen v{self.version} local-feature layout is described "
                                 f"in {README}")


def _query_intrinsics(layout: AachenLayout, kinds: list[str]) -> dict[str, Intrinsics]:
    result = {}
    for kind in kinds:
        layout.require(layout.query_list(kind))
        result.update(read_intrinsics(layout.query_list(kind)))
    return result


def _select_pairs(layout: AachenLayout, config: AachenConfig, database_names: set[str],
                  queries: dict[str, Intrinsics]) -> list[Pair]:
    """The pairs to match; every name must be a database image or a query with intrinsics."""
    known = database_names | set(queries)
    protocol = read_pairs(layout.pairs)
    if config.pairs is None:
        pairs = protocol
    else:
        db_pairs = read_pairs(config.db_pairs) if config.db_pairs else [
            p for p in protocol if p[0] not in queries and p[1] not in queries and not p[0].startswith("query/")
            and not p[1].startswith("query/")]
        query_pairs = [p for p in read_pairs(config.pairs) if p[0] in queries or p[1] in queries]
        if not query_pairs:
            raise D2sfmError(f"{config.pairs}: no pair names a query of the sets {config.queries}; check --queries")
        pairs = unique_pairs(db_pairs + query_pairs)
    unknown = sorted({n for p in pairs for n in p} - known)
    if unknown:
        raise D2sfmError(f"{len(unknown)} image(s) in the pair list are neither in {layout.database.name} nor in a "
                         f"query list with intrinsics (first: {unknown[0]}); fix the pair list or the query lists")
    return pairs


def _add_missing_queries(database_path: Path, queries: dict[str, Intrinsics], names: set[str]) -> None:
    """v1.1's database holds only the night queries; other queries join it with their listed intrinsics."""
    with pycolmap.Database.open(database_path) as database:
        present = {image.name for image in database.read_all_images()}
        for name in sorted(names - present):
            camera = queries[name].camera(0)
            camera.has_prior_focal_length = True
            camera_id = database.write_camera(camera)
            database.write_image(pycolmap.Image(name=name, camera_id=camera_id))


def localize(dataset: str | Path, config: AachenConfig | None = None, output: str | Path | None = None) -> dict:
    """Localize the queries, write the submission file and summary.json (scores where the ground truth is
    present) under ``output`` (default outputs/aachen[_v1_1]); returns the summary. Finished stages are skipped."""
    config = config or AachenConfig()
    config = dataclasses.replace(config, pairs=Path(config.pairs) if config.pairs else None,
                                 db_pairs=Path(config.db_pairs) if config.db_pairs else None)
    layout = AachenLayout(Path(dataset), config.version)
    layout.require(layout.root, layout.database, layout.pairs, layout.images, layout.nvm, layout.intrinsics)
    kinds = [k.strip() for k in config.queries.split(",") if k.strip()]
    if any(k not in QUERY_KINDS for k in kinds) or not kinds:
        raise D2sfmError(f"--queries {config.queries!r}: use day, night or day,night")
    if config.pairs is None and kinds != ["night"]:
        raise D2sfmError("--queries other than night needs --pairs (the protocol's pair list covers the night "
                         "queries only)")
    if config.pairs is not None and not config.pairs.is_file():
        raise D2sfmError(f"{config.pairs}: no such pair file (one 'query database' name pair per line)")

    poses = read_nvm_poses(layout.nvm)
    intrinsics = read_intrinsics(layout.intrinsics)
    queries = _query_intrinsics(layout, kinds)
    database_names = set(read_image_ids(layout.database))  # read-only: pycolmap opens a copy later
    missing_query = sorted(n for n in queries if n not in database_names and config.pairs is None)
    if missing_query:
        raise D2sfmError(f"{layout.database}: {len(missing_query)} queries of the list are not in the database "
                         f"(first: {missing_query[0]}); use the database of this dataset version")
    pairs = _select_pairs(layout, config, database_names, queries)
    query_names = [n for n in dict.fromkeys(n for p in pairs for n in p) if n in queries]
    names = sorted({n for p in pairs for n in p})
    log.info(f"Aachen v{layout.version}: {len(poses)} database poses, {len(query_names)} queries, "
             f"{len(pairs)} pairs, {len(names)} images to extract")
    # the folder is opened (and --overwrite clears it) only once every input is known to be good
    run = RunFolder(Path(output or f"outputs/aachen{layout.suffix}"), config.run.overwrite)
    paths = {key: run.path(name) for key, name in [
        ("features", "features.h5"), ("pairs", "pairs.txt"), ("matches", "matches.h5"),
        ("database", "database.db"), ("reference", "sparse-empty"), ("triangulated", "sparse-database"),
        ("final", "sparse-final"), ("registration", "registration.json"), ("summary", "summary.json")]}
    stages, state = run.stages, run.state
    progress = config.run.progress

    settings = StageSettings(run.state, {
        "match": match_settings(config.matching),
        # the database holds the pairs' verified matches and the queries with their intrinsics
        "database": {"dataset": str(layout.root.resolve()), "pairs": pairs_digest(pairs),
                     "queries": digest("\n".join(query_names))},
        "register": {"min_inliers": config.min_inliers, "min_inlier_ratio": config.min_inlier_ratio,
                     "refine_query_intrinsics": config.refine_query_intrinsics}}, AACHEN_STAGES,
        implicit={"match": EARLIER_MATCHING})
    extracted, usable = extract_and_match(config.features, config.matching, config.run, run, layout.images,
                                          names, pairs, settings)

    drop_database_refined_unasked(paths["database"], config.refine.enabled, config.refine.method)

    def discard_stale_results() -> None:
        """Before the database's keypoints change: the triangulation and registrations made from the earlier ones
        are stale (removed first, so that an interrupted run cannot leave them beside the new database)."""
        for stale in (paths["reference"], paths["triangulated"], paths["final"]):
            shutil.rmtree(stale, ignore_errors=True)
        paths["registration"].unlink(missing_ok=True)

    def build_database() -> None:
        discard_stale_results()
        with atomic_database(paths["database"]) as scratch:
            shutil.copyfile(layout.database, scratch)
            _add_missing_queries(scratch, queries, set(query_names))
            ids = read_image_ids(scratch)
            with_features = {n: ids[n] for n in names if n in extracted}
            verification = import_and_verify(scratch, with_features, paths["features"], paths["matches"], usable,
                                             progress)
            log.info(f"  {verification.describe()}")
            settings.finished("database")
            run.save(verification=verification.__dict__)

    if "database" in settings.redo:
        discard_stale_results()
        paths["database"].unlink(missing_ok=True)
    stages.run("database", paths["database"].is_file(), build_database)
    settings.finished("database")

    def refine() -> None:
        discard_stale_results()
        database_pass, query_pass = refine_localization_database(
            paths["database"], layout.images, query_names, resolve_weights(config.features.weights, progress=progress),
            resolve_device(config.run.device), config.refine.settings(), progress=progress)
        log.info(f"  database images: {database_pass.describe()}\n  queries: {query_pass.describe()}")

    if config.refine.enabled:
        stages.run("refine", is_refined(paths["database"]), refine)

    def triangulate() -> None:
        reference = build_reference_model(paths["database"], poses, intrinsics)
        reference.write_binary(_fresh_dir(paths["reference"]))
        model = triangulate_fixed(reference, paths["database"], layout.images, paths["triangulated"])
        log.info(f"  {model.num_points3D()} points triangulated, mean track length "
                 f"{model.compute_mean_track_length():.2f}")

    stages.run("triangulate", paths["triangulated"].is_dir(), triangulate)

    def register() -> None:
        model = read_model(paths["triangulated"])
        options = registration_options(config.min_inliers, config.min_inlier_ratio,
                                       refine_intrinsics=config.refine_query_intrinsics)
        final, results = register_queries(paths["database"], model, query_names, options,
                                          refine_intrinsics=config.refine_query_intrinsics, progress=progress)
        final.write_binary(_fresh_dir(paths["final"]))
        write_text_atomic(paths["registration"], json.dumps([r.as_dict() for r in results], indent=2))
        settings.finished("register")

    if "register" in settings.redo:
        paths["registration"].unlink(missing_ok=True)
    stages.run("register", paths["registration"].is_file() and paths["final"].is_dir(), register)
    settings.finished("register")
    run.save()

    final = read_model(paths["final"])
    by_name = {image.name: image for image in final.images.values()}
    outcomes = []
    for result in json.loads(paths["registration"].read_text()):
        name = result["name"]
        image = by_name.get(name)
        fallback = result["best_database_image"] or next(
            (b if a == name else a for a, b in pairs if name in (a, b) and (b if a == name else a) in poses), None)
        if result["registered"] and image is not None and image.has_pose:
            pose, fallback, reason = pose_from_rigid3d(image.cam_from_world()), None, ""
        else:
            pose = poses.get(fallback)
            reason = (f"not registered: {result['matches']} verified matches, {result['correspondences_2d3d']} "
                      "2D-3D correspondences" if name in extracted else "image unreadable")
        outcomes.append(QueryOutcome(name, pose is not None and fallback is None, pose, result["matches"],
                                     result["inliers"], result["seconds"], fallback, reason,
                                     {"correspondences_2d3d": result["correspondences_2d3d"]}))
    finish_localization(
        outcomes, run.path(layout.submission), paths["summary"], ground_truth_if_present(layout.root / GROUND_TRUTH),
        THRESHOLD_PRESETS[layout.thresholds],
        extra={"dataset": str(layout.root), "version": layout.version, "pairs": len(usable),
               "verification": state.get("verification"), "unreadable": state.get("unreadable", []),
               "refinement": refinement_record(paths["database"]),
               "stage_seconds": stages.times})
    return json.loads(paths["summary"].read_text())


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
