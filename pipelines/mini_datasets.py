"""Miniature localization datasets in the benchmarks' exact on-disk formats, built from scenes with known cameras.

Aachen and InLoc are tens of GB, so the localization pipelines are exercised on small datasets written in their
formats: an old-schema COLMAP ``database.db``, an NVM model, intrinsics and query lists, pair lists, and (InLoc)
``.jpg.mat`` scans with per-pixel XYZ. The writers here produce them from any set of posed images: the embedded
synthetic scene, or real photos whose poses come from a reconstruction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from d2sfm.io.atomic import atomic_path, write_text_atomic
from d2sfm.localization.poses import Pose, write_poses
from d2sfm.localization.reference_model import Intrinsics

# COLMAP's database schema before rigs and frames (COLMAP <= 3.11), as the benchmark's database.db uses it.
OLD_SCHEMA = """
CREATE TABLE cameras (camera_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, model INTEGER NOT NULL,
  width INTEGER NOT NULL, height INTEGER NOT NULL, params BLOB, prior_focal_length INTEGER NOT NULL);
CREATE TABLE images (image_id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, name TEXT NOT NULL UNIQUE,
  camera_id INTEGER NOT NULL, prior_qw REAL, prior_qx REAL, prior_qy REAL, prior_qz REAL, prior_tx REAL,
  prior_ty REAL, prior_tz REAL, CONSTRAINT image_id_check CHECK(image_id >= 0 and image_id < 2147483647),
  FOREIGN KEY(camera_id) REFERENCES cameras(camera_id));
CREATE UNIQUE INDEX index_name ON images(name);
CREATE TABLE keypoints (image_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
  data BLOB, FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE descriptors (image_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
  data BLOB, FOREIGN KEY(image_id) REFERENCES images(image_id) ON DELETE CASCADE);
CREATE TABLE matches (pair_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL,
  data BLOB);
CREATE TABLE two_view_geometries (pair_id INTEGER PRIMARY KEY NOT NULL, rows INTEGER NOT NULL,
  cols INTEGER NOT NULL, data BLOB, config INTEGER NOT NULL, F BLOB, E BLOB, H BLOB);
"""
CAMERA_MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4}


@dataclass
class PosedImage:
    """One image of a source scene: pixels (BGR), intrinsics and true world-to-camera pose."""

    name: str
    pixels: np.ndarray
    intrinsics: Intrinsics
    pose: Pose


def write_old_schema_database(path: str | os.PathLike, images: Sequence[tuple[str, Intrinsics]],
                              prior_focal: bool = False) -> dict[str, int]:
    """A database as the benchmark ships it: one camera per image, ids from 1 in the given order, no features."""
    ids = {}
    with atomic_path(path) as scratch:
        connection = sqlite3.connect(scratch)
        connection.executescript(OLD_SCHEMA)
        for image_id, (name, intrinsics) in enumerate(images, start=1):
            params = np.asarray(intrinsics.params, np.float64).tobytes()
            connection.execute("INSERT INTO cameras VALUES (?, ?, ?, ?, ?, ?)", (
                image_id, CAMERA_MODEL_IDS[intrinsics.model], intrinsics.width, intrinsics.height, params,
                int(prior_focal)))
            connection.execute("INSERT INTO images (image_id, name, camera_id) VALUES (?, ?, ?)",
                               (image_id, name, image_id))
            ids[name] = image_id
        connection.commit()
        connection.close()
    return ids


def intrinsics_line(name: str, intrinsics: Intrinsics) -> str:
    return " ".join([name, intrinsics.model, str(intrinsics.width), str(intrinsics.height),
                     *(f"{v:.10g}" for v in intrinsics.params)])


def write_nvm(path: str | os.PathLike, posed: Sequence[PosedImage]) -> None:
    """NVM_V3 with the cameras section only (the benchmark's reader needs no points)."""
    lines = ["NVM_V3", "", str(len(posed))]
    for image in posed:
        q, c = image.pose.qvec, image.pose.centre
        lines.append(" ".join([image.name, f"{image.intrinsics.params[0]:.10g}", *(f"{v:.17g}" for v in q),
                               *(f"{v:.17g}" for v in c), "0", "0"]))
    lines += ["", "0", ""]
    write_text_atomic(path, "\n".join(lines))


def write_image(path: Path, pixels: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix.lower(), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ValueError(f"cannot encode {path.name}")
    with atomic_path(path) as scratch:
        scratch.write_bytes(encoded.tobytes())


def write_mini_aachen(root: str | os.PathLike, database: Sequence[PosedImage], queries: Sequence[PosedImage],
                      version: str = "1.0", queries_in_database: bool = True) -> Path:
    """The Aachen Day-Night local-feature layout (v1.0 or v1.1) with ``query_ground_truth.txt`` beside it.

    Database images are named ``db/<n>.jpg`` and queries ``query/<day|night>/<camera>/<name>.jpg`` by the
    caller; the pair list holds every database pair and every query with every database image. Day queries go to
    ``day_time_queries_with_intrinsics.txt``; ``queries_in_database=False`` leaves them out of the database, as
    v1.1's database leaves out its day queries.
    """
    root = Path(root)
    suffix = "" if version == "1.0" else "_v1_1"
    for image in [*database, *queries]:
        write_image(root / "images" / "images_upright" / image.name, image.pixels)
    in_database = [*database, *queries] if queries_in_database else list(database)
    write_old_schema_database(root / f"database{suffix}.db", [(i.name, i.intrinsics) for i in in_database])
    models = root / "3D-models"
    if version == "1.0":
        nvm, intrinsics = models / "aachen_cvpr2018_db.nvm", models / "database_intrinsics.txt"
    else:
        nvm = models / "aachen_v_1_1" / "aachen_v_1_1.nvm"
        intrinsics = models / "aachen_v_1_1" / "database_intrinsics_v1_1.txt"
    write_nvm(nvm, database)
    write_text_atomic(intrinsics, "".join(intrinsics_line(i.name, i.intrinsics) + "\n" for i in database))
    for kind in ("day", "night"):
        write_text_atomic(root / "queries" / f"{kind}_time_queries_with_intrinsics.txt", "".join(
            intrinsics_line(q.name, q.intrinsics) + "\n" for q in queries if q.name.startswith(f"query/{kind}/")))
    pairs = [(a.name, b.name) for k, a in enumerate(database) for b in database[k + 1:]]
    pairs += [(q.name, d.name) for q in queries for d in database]
    write_text_atomic(root / f"image_pairs_to_match{suffix}.txt", "".join(f"{a} {b}\n" for a, b in pairs))
    write_text_atomic(root / "pairs-query-retrieval.txt",
                      "".join(f"{q.name} {d.name}\n" for q in queries for d in database))
    write_poses(root / "query_ground_truth.txt", [(q.name.split("/")[-1], q.pose) for q in queries])
    return root


def posed_images_from_model(model, image_dir: str | os.PathLike, scale: float = 1.0) -> dict[str, PosedImage]:
    """Every registered image of a pycolmap model with its pixels, intrinsics and pose (world scaled by
    ``scale``), keyed by the model's image name."""
    from d2sfm.localization.poses import pose_from_rigid3d

    result = {}
    for image in model.images.values():
        if not image.has_pose:
            continue
        camera = model.cameras[image.camera_id]
        pose = pose_from_rigid3d(image.cam_from_world())
        intrinsics = Intrinsics(camera.model.name, camera.width, camera.height, tuple(float(v) for v in camera.params))
        pixels = cv2.imread(str(Path(image_dir) / image.name), cv2.IMREAD_COLOR)
        result[image.name] = PosedImage(image.name, pixels, intrinsics, Pose(pose.qvec, pose.tvec * scale))
    return result


def metric_scale(model, camera_distance_m: float = 50.0) -> float:
    """A scale that puts the cameras at a median ``camera_distance_m`` from the centroid of the 3D points, for
    models of arbitrary scale (SfM from photos) that must be scored in metres."""
    points = np.array([p.xyz for p in model.points3D.values()])
    centres = np.array([image.projection_center() for image in model.images.values() if image.has_pose])
    return camera_distance_m / float(np.median(np.linalg.norm(centres - np.median(points, axis=0), axis=1)))


def as_aachen(images: dict[str, PosedImage], query_names: Sequence[str], night: bool = True,
              seed: int = 0) -> tuple[list[PosedImage], list[PosedImage]]:
    """Rename into Aachen's layout: database ``db/<k>.jpg``, queries ``query/night/nexus5x/<stem>.jpg`` made
    night-like (darker, colour cast, noise), or ``query/day/nexus4/<stem>.jpg`` unchanged when ``night`` is off."""
    from d2sfm.synthetic.photometric import night_like

    rng = np.random.default_rng(seed)
    database, queries = [], []
    for name in sorted(images):
        image = images[name]
        if name in query_names:
            pixels = night_like(image.pixels, rng) if night else image.pixels
            folder = "query/night/nexus5x" if night else "query/day/nexus4"
            queries.append(PosedImage(f"{folder}/{Path(name).stem}.jpg", pixels, image.intrinsics, image.pose))
        else:
            database.append(PosedImage(f"db/{len(database) + 1}.jpg", image.pixels, image.intrinsics, image.pose))
    return database, queries


def write_mini_inloc(root: str | os.PathLike, cutouts: Sequence[tuple[PosedImage, np.ndarray]],
                     queries: Sequence[PosedImage]) -> Path:
    """The InLoc layout: ``database/cutouts/<building>/<scan>/<name>.jpg`` each with ``<name>.jpg.mat`` holding
    ``XYZcut``; ``query/iphone7/*.JPG``; ``pairs/pairs-query-netvlad40.txt`` (every query with every cutout,
    nearest camera first, standing in for retrieval); ``query_ground_truth.txt``. ``cutouts`` pairs each posed
    cutout with its (H, W, 3) scan coordinates; names are the caller's, relative to ``root``."""
    import scipy.io

    root = Path(root)
    for image, xyz in cutouts:
        write_image(root / image.name, image.pixels)
        with atomic_path(root / f"{image.name}.mat") as scratch:
            with open(scratch, "wb") as handle:
                scipy.io.savemat(handle, {"XYZcut": xyz.astype(np.float32)})
    for query in queries:
        write_image(root / query.name, query.pixels)
    lines = []
    for query in queries:
        by_distance = sorted(cutouts, key=lambda c: float(np.linalg.norm(c[0].pose.centre - query.pose.centre)))
        lines += [f"{query.name} {cutout.name}\n" for cutout, _ in by_distance]
    write_text_atomic(root / "pairs" / "pairs-query-netvlad40.txt", "".join(lines))
    write_poses(root / "query_ground_truth.txt", [(q.name.split("/")[-1], q.pose) for q in queries])
    return root
