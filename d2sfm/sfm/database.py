"""The COLMAP database: cameras and images as COLMAP imports them, our keypoints and raw matches, then pycolmap's
geometric verification.

Cameras come from pycolmap's own image reader, so the EXIF focal length is used exactly as COLMAP uses it (and
its default prior, 1.2 x the larger image side, when there is none). Keypoints in features.h5 are already in
COLMAP's convention and go in unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import remove_sqlite_side_files
from d2sfm.io.h5 import read_keypoints
from d2sfm.io.matches_h5 import read_matches
from d2sfm.matching.pairs import Pair
from d2sfm.sfm.cameras import CAMERA_MODELS, parse_camera_params

CAMERA_MODES = {
    "auto": pycolmap.CameraMode.AUTO,  # one camera per distinct (EXIF camera, image size), as COLMAP's default
    "single": pycolmap.CameraMode.SINGLE,
    "per-image": pycolmap.CameraMode.PER_IMAGE,
    "per-folder": pycolmap.CameraMode.PER_FOLDER,
}


@dataclass
class VerificationSummary:
    pairs: int
    verified_pairs: int
    median_inliers: float

    def describe(self) -> str:
        return (f"{self.verified_pairs} of {self.pairs} pairs verified"
                f" (median {self.median_inliers:.0f} inliers per verified pair)")


def create_database(
    database_path: str | os.PathLike, image_dir: str | os.PathLike, names: Sequence[str],
    camera_mode: str = "auto", camera_model: str = "SIMPLE_RADIAL", camera_params: str = "",
) -> dict[str, int]:
    """Create a new database with cameras and images; returns {image name: image id}. ``camera_params``: known
    intrinsics, "fx,fy,cx,cy" or any model's COLMAP list (every image gets them; see :mod:`d2sfm.sfm.cameras`)."""
    if camera_mode not in CAMERA_MODES:
        raise D2sfmError(f"camera mode {camera_mode!r} is unknown; use one of {', '.join(CAMERA_MODES)}")
    if camera_model not in CAMERA_MODELS:
        raise D2sfmError(f"camera model {camera_model!r} is unknown; use one of {', '.join(CAMERA_MODELS)}")
    params = parse_camera_params(camera_model, camera_params)
    database_path = Path(database_path)
    database_path.unlink(missing_ok=True)
    remove_sqlite_side_files(database_path)  # a killed run's log would be read against the new file
    pycolmap.Database.open(database_path).close()
    options = pycolmap.ImageReaderOptions()
    options.camera_model = camera_model
    if params:
        options.camera_params = ",".join(repr(value) for value in params)
    pycolmap.import_images(database_path, image_dir, CAMERA_MODES[camera_mode], list(names), options)
    return read_image_ids(database_path)


@contextlib.contextmanager
def read_only(database_path: str | os.PathLike) -> Iterator[sqlite3.Connection]:
    """A sqlite connection that reads a database as it lies on disk. Immutable: opening with pycolmap upgrades an
    older schema (as the localization benchmark's) in place, and a user's benchmark file must never change under
    them; and a plain read-only connection to a WAL-mode database leaves its -wal and -shm files behind. A file
    that is not a database is a one-line error."""
    database_path = Path(database_path)
    if not database_path.is_file():
        raise D2sfmError(f"{database_path}: no such COLMAP database; check the path")
    uri = f"{database_path.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            yield connection
    except sqlite3.DatabaseError as error:
        raise D2sfmError(f"{database_path}: not a COLMAP database ({error}); check the path (a database.db that a "
                         "d2sfm run wrote can be deleted: the rerun builds it again)") from None


def read_image_ids(database_path: str | os.PathLike) -> dict[str, int]:
    """{image name: image id} of an existing database of either COLMAP schema."""
    with read_only(database_path) as connection:
        return {name: image_id for name, image_id in connection.execute("SELECT name, image_id FROM images")}


def import_features_and_matches(
    database_path: str | os.PathLike, image_ids: dict[str, int], features_path: str | os.PathLike,
    matches_path: str | os.PathLike, pairs: Sequence[Pair], progress: bool = True,
) -> None:
    """Write every image's keypoints and every pair's raw matches into the database. Each pair's indices are
    checked against the keypoints they index first: COLMAP trusts them and crashes the process (SIGSEGV in its
    two-view geometry) on one that is out of range, e.g. matches made from another features file."""
    counts: dict[str, int] = {}
    with pycolmap.Database.open(database_path) as database:
        for name, image_id in tqdm(image_ids.items(), desc="importing keypoints", unit="img", disable=not progress):
            keypoints = read_keypoints(features_path, name)[0]
            counts[name] = len(keypoints)
            database.write_keypoints(image_id, keypoints.astype(np.float32))
        for name0, name1 in tqdm(pairs, desc="importing matches", unit="pair", disable=not progress):
            matches, _ = read_matches(matches_path, name0, name1)
            check_match_indices(matches, (name0, name1), (counts[name0], counts[name1]), matches_path, features_path)
            database.write_matches(image_ids[name0], image_ids[name1], matches.astype(np.uint32))


def check_match_indices(matches: np.ndarray, names: Pair, counts: tuple[int, int], matches_path, features_path) -> None:
    """Every index of a (K, 2) match array within its image's keypoints, and no keypoint matched twice."""
    for column in (0, 1):
        indices = matches[:, column]
        if len(indices) and (indices.max() >= counts[column] or indices.min() < 0):
            bad = int(indices.max() if indices.max() >= counts[column] else indices.min())
            raise D2sfmError(
                f"{matches_path}: the pair {names[0]} {names[1]} matches keypoint {bad} of {names[column]}, which has "
                f"{counts[column]} keypoints in {features_path}: these matches were made from other features; delete "
                f"{Path(matches_path).name} (or pass --overwrite) and rerun to match again")


BUILD_TABLE = "d2sfm_build"  # one row: a token that changes whenever d2sfm rebuilds or refines the database


def stamp_database(database_path: str | os.PathLike) -> str:
    """Give a database (being written, before it is renamed into place) a new build token; returns it. Models
    record the token of the database they were mapped from, so a model of an earlier database is recognised as
    stale whatever order a killed run left the files in."""
    token = uuid.uuid4().hex
    with contextlib.closing(sqlite3.connect(database_path)) as connection, connection:
        connection.execute(f"CREATE TABLE IF NOT EXISTS {BUILD_TABLE} (token TEXT)")
        connection.execute(f"DELETE FROM {BUILD_TABLE}")
        connection.execute(f"INSERT INTO {BUILD_TABLE} VALUES (?)", (token,))
    return token


def database_token(database_path: str | os.PathLike) -> str | None:
    """The build token of a database (None for one d2sfm did not stamp: an earlier release's, or COLMAP's)."""
    with read_only(database_path) as connection:
        if not connection.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                                  (BUILD_TABLE,)).fetchone()[0]:
            return None
        row = connection.execute(f"SELECT token FROM {BUILD_TABLE}").fetchone()
        return row[0] if row else None


COLMAP_TABLES = ("cameras", "images", "keypoints", "matches", "two_view_geometries")


def database_problem(database_path: str | os.PathLike, names: Sequence[str]) -> str | None:
    """Why a database is not a complete one for these images (read-only, never changed), or None: an empty or
    foreign file, a missing COLMAP table, other images, or images without keypoints."""
    path = Path(database_path)
    if path.stat().st_size == 0:
        return "an empty file"
    try:
        with read_only(path) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [table for table in COLMAP_TABLES if table not in tables]
            if missing:
                return f"not a COLMAP database (no table {missing[0]!r})"
            stored = [row[0] for row in connection.execute("SELECT name FROM images")]
            with_keypoints = connection.execute("SELECT count(*) FROM keypoints").fetchone()[0]
    except D2sfmError:
        return "not an SQLite database"
    except sqlite3.DatabaseError as error:
        return f"damaged ({error})"
    if set(stored) != set(names):
        return f"holds {len(stored)} images, not this scene's {len(names)}"
    if with_keypoints < len(stored):
        return f"only {with_keypoints} of its {len(stored)} images have keypoints"
    return None


def verify_pairs(database_path: str | os.PathLike, min_inliers: int = 15, max_error: float = 4.0,
                 seed: int = 0) -> VerificationSummary:
    """pycolmap's geometric verification (F / E / H with RANSAC) of every pair that has matches in the database
    (those imported from the pair list). Not through COLMAP's pair-list reader, which splits names at spaces.
    RANSAC is seeded (pycolmap's default draws a new seed per run): the same matches verify to the same inliers on
    every run, so a rerun or a benchmark's variants map the same verified graph instead of a new draw of its
    borderline matches."""
    options = pycolmap.TwoViewGeometryOptions()
    options.min_num_inliers = min_inliers
    options.ransac.max_error = max_error
    options.ransac.random_seed = seed
    pycolmap.geometric_verification(database_path, two_view_geometry_options=options)
    return verification_summary(database_path)


def verification_summary(database_path: str | os.PathLike) -> VerificationSummary:
    with pycolmap.Database.open(database_path) as database:
        matched = database.num_matched_image_pairs()
        _, geometries = database.read_two_view_geometries()
    inliers = [len(g.inlier_matches) for g in geometries if len(g.inlier_matches) > 0]
    return VerificationSummary(matched, len(inliers), float(np.median(inliers)) if inliers else 0.0)


def verified_pair_inliers(database_path: str | os.PathLike) -> dict[tuple[str, str], int]:
    """{(image name, image name): verified inlier count} of every verified pair, read from the table's row counts
    (not the match arrays, so it stays cheap on a 10,000-image database), read-only as ``read_image_ids``."""
    names = {image_id: name for name, image_id in read_image_ids(database_path).items()}
    with read_only(database_path) as connection:
        rows = connection.execute("SELECT pair_id, rows FROM two_view_geometries WHERE rows > 0").fetchall()
    counts = {}
    for pair_id, inliers in rows:
        first, second = pycolmap.pair_id_to_image_pair(pair_id)
        counts[(names[int(first)], names[int(second)])] = int(inliers)
    return counts


def import_and_verify(database_path: str | os.PathLike, image_ids: dict[str, int], features_path: str | os.PathLike,
                      matches_path: str | os.PathLike, pairs: Sequence[Pair], progress: bool = True
                      ) -> VerificationSummary:
    """The database stage of every pipeline, on a database being written (``atomic_database``) that holds the
    images: keypoints and matches imported, the pairs verified, the build token stamped."""
    import_features_and_matches(database_path, image_ids, features_path, matches_path, pairs, progress)
    verification = verify_pairs(database_path)
    stamp_database(database_path)
    return verification
