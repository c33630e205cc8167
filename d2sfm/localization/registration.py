"""Registering query images into a fixed model as COLMAP's ``image_registrator`` does.

The registrator loads the database's verified matches, then for each unregistered image collects its 2D-3D
correspondences through the database images' triangulated keypoints and runs COLMAP's absolute pose estimation
(P3P / LO-RANSAC with the mapper's ``abs_pose_*`` thresholds, then refinement). The model's points and the
database poses are not changed.

Fixed intrinsics: the benchmark's README asks for the queries to be registered at the intrinsics stored in the
database. COLMAP would still estimate a query's focal length when its camera lacks the prior-focal-length flag
(as in the benchmark's database) and refine it when ``abs_pose_refine_focal_length`` is on (its default), so both
are switched off here unless ``refine_intrinsics`` is asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.localization.absolute_pose import RANSAC_SEED
from d2sfm.sfm.database import read_image_ids


@dataclass
class RegistrationResult:
    name: str
    registered: bool
    matches: int  # verified matches to database images
    correspondences_2d3d: int  # query keypoints with at least one triangulated database observation
    inliers: int
    best_database_image: str | None  # most verified matches; its pose stands in when registration fails
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def registration_options(min_inliers: int = 30, min_inlier_ratio: float = 0.25, max_error: float = 12.0,
                         refine_intrinsics: bool = False) -> pycolmap.IncrementalMapperOptions:
    """COLMAP's defaults for the mapper's absolute pose step (those of the benchmark's registrator call), with a
    seeded pose RANSAC: reseeded at each query, so a query's pose depends neither on the queries before it nor on
    what ran before in the process (a rerun of the register stage alone, a Python session)."""
    options = pycolmap.IncrementalMapperOptions()
    options.random_seed = RANSAC_SEED
    options.abs_pose_min_num_inliers = min_inliers
    options.abs_pose_min_inlier_ratio = min_inlier_ratio
    options.abs_pose_max_error = max_error
    options.abs_pose_refine_focal_length = refine_intrinsics
    options.abs_pose_refine_extra_params = refine_intrinsics
    return options


def register_queries(database_path: str | os.PathLike, model: pycolmap.Reconstruction, query_names: Sequence[str],
                     options: pycolmap.IncrementalMapperOptions | None = None, refine_intrinsics: bool = False,
                     min_num_matches: int = 15, progress: bool = True) -> tuple[pycolmap.Reconstruction,
                                                                                 list[RegistrationResult]]:
    """Register each query into ``model``; returns the model with the registered queries and one result each."""
    options = options or registration_options(refine_intrinsics=refine_intrinsics)
    cache_options = pycolmap.DatabaseCacheOptions()
    cache_options.min_num_matches = min_num_matches
    with pycolmap.Database.open(database_path) as database:
        cache = pycolmap.DatabaseCache.create(database, cache_options)
    name_to_id = {image.name: image_id for image_id, image in cache.images.items()}
    unknown = [name for name in query_names if name not in name_to_id]
    if unknown:  # the cache leaves out images without verified matches: those are answered as not registered
        in_database = read_image_ids(database_path)
        missing = [name for name in unknown if name not in in_database]
        if missing:
            raise D2sfmError(f"{database_path}: {len(missing)} queries are not in the database "
                             f"(first: {missing[0]})")
    mapper = pycolmap.IncrementalMapper(cache)
    mapper.begin_reconstruction(model)
    reconstruction = mapper.reconstruction
    graph = cache.correspondence_graph
    database_ids = [image_id for image_id, image in reconstruction.images.items() if image.has_pose]
    results = []
    for name in tqdm(query_names, desc="registering queries", unit="query", disable=not progress):
        start = time.perf_counter()
        if name not in name_to_id:
            results.append(RegistrationResult(name, False, 0, 0, 0, None, time.perf_counter() - start))
            continue
        image_id = name_to_id[name]
        camera = reconstruction.cameras[reconstruction.images[image_id].camera_id]
        if not refine_intrinsics:
            camera.has_prior_focal_length = True
        matches = {other: graph.num_matches_between_images(image_id, other) for other in database_ids}
        best = max(matches, key=matches.get) if matches and max(matches.values()) > 0 else None
        correspondences = _count_2d3d(reconstruction, graph, image_id, [i for i, n in matches.items() if n > 0])
        registered = bool(mapper.register_next_image(options, image_id))
        image = reconstruction.images[image_id]
        results.append(RegistrationResult(
            name, registered and image.has_pose, sum(matches.values()), correspondences,
            image.num_points3D if registered else 0,
            reconstruction.images[best].name if best is not None else None, time.perf_counter() - start))
    mapper.end_reconstruction(False)
    return reconstruction, results


def _count_2d3d(reconstruction: pycolmap.Reconstruction, graph: pycolmap.CorrespondenceGraph, image_id: int,
                matched_ids: Sequence[int]) -> int:
    """Query keypoints matched to at least one triangulated database keypoint: what absolute pose can use."""
    with_point3D: set[int] = set()
    for other_id in matched_ids:
        other = reconstruction.images[other_id]
        observed = np.zeros(other.num_points2D(), bool)
        observed[np.asarray(other.get_observation_point2D_idxs(), dtype=np.int64)] = True
        pairs = graph.extract_matches_between_images(image_id, other_id).astype(np.int64)
        with_point3D.update(pairs[observed[pairs[:, 1]], 0].tolist())
    return len(with_point3D)
