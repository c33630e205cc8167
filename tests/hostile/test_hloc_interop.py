"""hloc reading d2sfm's files: ``d2sfm.export hloc --model`` makes a refined model's 2D points and the keypoints
of the exported features file one and the same (point2D index i == keypoint i, at the same position), and what
hloc's readers make of d2sfm's own features.h5.

hloc is not on PyPI (``pip index versions hloc``: no matching distribution; its setup.py also needs LightGlue from
GitHub), so it cannot be a test dependency. The readers below follow hloc's conventions as its code reads files
at commit c13273b (cvg/Hierarchical-Localization, 2025-12-10); each names the lines it mirrors. A test at the end
reads the export with hloc itself where it happens to be importable.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from d2sfm.commands.export import main as export_main
from d2sfm.errors import D2sfmError
from d2sfm.io.h5 import read_features
from d2sfm.io.model_files import read_model

from .conftest import assert_one_line_error, command, reconstruct


@pytest.fixture(scope="module")
def completed_scene(finished_scene, tmp_path_factory, weights_path) -> Path:
    """The finished scene mapped and refined again with --complete-tracks (off by default): its model has 2D points
    appended after each image's keypoints, which is what the export must handle."""
    copy = tmp_path_factory.mktemp("completed") / "scene"
    shutil.copytree(finished_scene, copy)
    (copy / ".d2sfm.lock").unlink(missing_ok=True)
    run = reconstruct(copy, "--complete-tracks", weights=weights_path, in_process=True)
    assert run.returncode == 0, run.stderr
    return copy


def hloc_keypoints(path: Path, name: str) -> np.ndarray:
    """The keypoints as hloc reads them (hloc/utils/io.py ``get_keypoints``, lines 37-46: the ``keypoints``
    dataset of the image's group, as stored, no attribute consulted but the dataset's ``uncertainty``), in COLMAP's
    convention as hloc's importers make them (+0.5: hloc/triangulation.py ``import_features`` line 53,
    hloc/localize_sfm.py ``pose_from_cluster`` line 83)."""
    with h5py.File(path, "r") as handle:
        return np.asarray(handle[name]["keypoints"]) + 0.5


def hloc_matcher_inputs(path: Path, name: str) -> dict[str, np.ndarray]:
    """Every dataset of the image's group, as hloc's matchers get them (hloc/match_features.py
    ``FeaturePairsDataset.__getitem__``, lines 125-130: each dataset as float, named after the dataset)."""
    with h5py.File(path, "r") as handle:
        return {key: np.asarray(value, dtype=np.float32) for key, value in handle[name].items()}


def mutual_nearest_neighbours(descriptors0: np.ndarray, descriptors1: np.ndarray, ratio: float | None = None,
                              distance: float | None = None) -> np.ndarray:
    """``matches0`` of hloc's nearest-neighbour matcher's rule (hloc/matchers/nearest_neighbor.py: similarity =
    dot product of D x N descriptors; distance 2 (1 - similarity); optional ratio test and distance threshold on
    squared values; mutual check), written here for D x N arrays."""
    similarity = descriptors0.T @ descriptors1

    def best(sim: np.ndarray) -> np.ndarray:
        order = np.argsort(-sim, axis=1, kind="stable")
        first = np.take_along_axis(sim, order[:, :1], axis=1)[:, 0]
        keep = np.ones(len(sim), bool)
        if ratio is not None and sim.shape[1] > 1:
            second = np.take_along_axis(sim, order[:, 1:2], axis=1)[:, 0]
            keep &= 2 * (1 - first) <= ratio**2 * 2 * (1 - second)
        if distance is not None:
            keep &= 2 * (1 - first) <= distance**2
        return np.where(keep, order[:, 0], -1)

    matches0, matches1 = best(similarity), best(similarity.T)
    mutual = (matches0 >= 0) & (matches1[np.maximum(matches0, 0)] == np.arange(len(matches0)))
    return np.where(mutual, matches0, -1)


def export(scene: Path, output: Path, *extra, features: Path | None = None):
    return command("export", "hloc", features or scene / "features.h5", scene / "matches.h5", "-o", output,
                   "--quiet", *extra)


def test_model_export_aligns_keypoints_with_points2D(completed_scene, tmp_path):
    """After ``--model``: each image of the model has exactly its 2D points as keypoints (refined positions, then
    the points track completion appended), every observation of every 3D point indexes a keypoint at its
    position, the original keypoints keep their descriptors and scores, the appended ones have zeros; an image the
    model does not hold keeps its features unchanged."""
    features = tmp_path / "features.h5"
    shutil.copy(completed_scene / "features.h5", features)
    with h5py.File(features, "a") as handle:  # an image of the features file that the model does not hold
        handle.require_group("extra")
        handle.copy(handle["view_01.png"], "extra/view_01.png")
    model = read_model(completed_scene / "sparse" / "0")
    run = export(completed_scene, tmp_path / "hloc", "--model", completed_scene / "sparse" / "0", features=features)
    assert run.returncode == 0, run.stderr
    exported = tmp_path / "hloc" / "features.h5"

    moved = appended = 0
    for image_id in model.reg_image_ids():
        image = model.images[image_id]
        original = read_features(features, image.name)
        count = len(original.keypoints)
        points2D = np.array([point.xy for point in image.points2D])
        keypoints = hloc_keypoints(exported, image.name)
        assert keypoints.shape == points2D.shape
        assert np.allclose(keypoints, points2D, atol=1e-4, rtol=0)
        moved += int((np.linalg.norm(points2D[:count] - original.keypoints, axis=1) > 0.01).sum())
        appended += len(points2D) - count

        inputs = hloc_matcher_inputs(exported, image.name)
        assert inputs["descriptors"].shape == (original.descriptors.shape[1], len(points2D))  # D x N
        assert np.array_equal(inputs["descriptors"][:, :count], original.descriptors.T.astype(np.float32))
        assert not inputs["descriptors"][:, count:].any() and not inputs["scores"][count:].any()
        assert np.allclose(inputs["scores"][:count], original.scores, rtol=1e-3)
        assert tuple(inputs["image_size"]) == original.image_size
    assert moved and appended, "the fixture's model is refined: moved and appended 2D points are what is tested"

    keypoints = {image.name: hloc_keypoints(exported, image.name) for image in model.images.values()}
    for point in model.points3D.values():
        for element in point.track.elements:
            image = model.images[element.image_id]
            assert np.allclose(keypoints[image.name][element.point2D_idx], image.points2D[element.point2D_idx].xy,
                               atol=1e-4, rtol=0)

    untouched = read_features(features, "extra/view_01.png")
    assert np.allclose(hloc_keypoints(exported, "extra/view_01.png"), untouched.keypoints, atol=1e-4, rtol=0)
    assert np.array_equal(hloc_matcher_inputs(exported, "extra/view_01.png")["descriptors"],
                          untouched.descriptors.T.astype(np.float32))
    assert "without a descriptor" in run.stdout


def test_appended_points_are_never_matched(completed_scene, tmp_path):
    """hloc's nearest-neighbour rules (mutual, ratio 0.8, distance 0.7: its NN-mutual, NN-ratio and NN-superpoint
    configurations) between the exported images match none of the zero-descriptor points, and match the original
    keypoints exactly as they match them without --model."""
    assert export(completed_scene, tmp_path / "aligned", "--model", completed_scene / "sparse" / "0").returncode == 0
    assert export(completed_scene, tmp_path / "plain").returncode == 0
    model = read_model(completed_scene / "sparse" / "0")
    names = sorted(model.images[image_id].name for image_id in model.reg_image_ids())
    for name0, name1 in itertools.pairwise(names):
        counts = [len(read_features(completed_scene / "features.h5", name).keypoints) for name in (name0, name1)]
        aligned = [hloc_matcher_inputs(tmp_path / "aligned" / "features.h5", name)["descriptors"]
                   for name in (name0, name1)]
        plain = [hloc_matcher_inputs(tmp_path / "plain" / "features.h5", name)["descriptors"]
                 for name in (name0, name1)]
        assert aligned[0].shape[1] > counts[0] or aligned[1].shape[1] > counts[1]
        for rule in ({}, {"ratio": 0.8}, {"distance": 0.7}):
            matches0 = mutual_nearest_neighbours(*aligned, **rule)
            assert not (matches0[counts[0]:] >= 0).any() and not (matches0 >= counts[1]).any(), (name0, name1, rule)
            assert np.array_equal(matches0[:counts[0]], mutual_nearest_neighbours(*plain, **rule))


def test_model_of_other_features_is_refused(scene, tmp_path):
    """A model that was not mapped from these features: an image it holds that the file lacks, or an image whose
    2D points are not its keypoints (here: shuffled), is one line naming the image, and nothing is written."""
    features = tmp_path / "features.h5"
    shutil.copy(scene / "features.h5", features)
    with h5py.File(features, "a") as handle:
        keypoints = handle["view_03.png"]["keypoints"]
        keypoints[...] = np.random.default_rng(0).permutation(keypoints[()])
    run = export(scene, tmp_path / "out", "--model", scene / "sparse" / "0", features=features)
    assert_one_line_error(run, "view_03.png", "other features", str(features))
    assert not (tmp_path / "out" / "features.h5").exists()

    with h5py.File(features, "a") as handle:
        del handle["view_05.png"]
    with pytest.raises(D2sfmError, match="image 'view_05.png' has no features in"):
        export_main(["hloc", str(features), "-o", str(tmp_path / "out"), "--model", str(scene / "sparse" / "0"),
                     "--quiet"])
    with pytest.raises(D2sfmError, match="not a COLMAP model"):
        export_main(["hloc", str(features), "-o", str(tmp_path / "out2"), "--model", str(scene / "sparse"),
                     "--quiet"])
    assert not (tmp_path / "out2").exists()


def test_hloc_reads_d2sfms_own_file_half_a_pixel_off(scene, tmp_path):
    """What the export is for: hloc's readers take d2sfm's own features.h5 without complaint (same dataset names and
    layout) but 0.5 px off and with N x D descriptors, which hloc's matchers take for D x N. The file says so in
    its attributes, which hloc does not read; the exported file is right."""
    native = scene / "features.h5"
    ours = read_features(native, "view_01.png")
    with h5py.File(native, "r") as handle:
        assert handle.attrs["keypoint_convention"] == "colmap" and handle.attrs["descriptor_layout"] == "N x D"
    assert np.allclose(hloc_keypoints(native, "view_01.png") - ours.keypoints, 0.5, atol=1e-4, rtol=0)
    assert hloc_matcher_inputs(native, "view_01.png")["descriptors"].shape == ours.descriptors.shape  # N x D
    assert export(scene, tmp_path / "hloc").returncode == 0
    assert np.allclose(hloc_keypoints(tmp_path / "hloc" / "features.h5", "view_01.png"), ours.keypoints, atol=1e-4)


def test_pycolmap_skips_two_view_geometries_without_configuration(scene, tmp_path):
    """Why hloc's triangulation.main gives no 3D point under pycolmap 4.2 unless estimate_two_view_geometries=True
    (README, "Working with hloc"): its pose-based verification (hloc/triangulation.py ``geometric_verification``,
    lines 143 and 156-160; ``import_matches`` line 82 with skip_geometric_verification) writes
    ``pycolmap.TwoViewGeometry(inlier_matches=...)``, whose configuration is UNDEFINED, and COLMAP 4.2's database
    cache skips such pairs ("two-view geometries with UNDEFINED configuration (written by an outdated producer);
    they are skipped"). The same inliers with a configuration triangulate. If this test fails, pycolmap has changed:
    update the README paragraph."""
    model = read_model(scene / "sparse" / "0")
    with pycolmap.Database.open(scene / "database.db") as database:
        pair_ids, geometries = database.read_two_view_geometries()
    inliers = {pair_id: np.asarray(geometry.inlier_matches) for pair_id, geometry in zip(pair_ids, geometries)
               if len(geometry.inlier_matches)}
    assert inliers
    points = {}
    for label, configuration in (("undefined", None), ("calibrated", pycolmap.TwoViewGeometryConfiguration.CALIBRATED)):
        database_path = tmp_path / f"{label}.db"
        shutil.copy(scene / "database.db", database_path)
        with contextlib.closing(sqlite3.connect(database_path)) as connection, connection:
            connection.execute("DELETE FROM two_view_geometries")
        with pycolmap.Database.open(database_path) as database:
            for pair_id, matches in inliers.items():
                geometry = pycolmap.TwoViewGeometry(inlier_matches=matches)
                if configuration is not None:
                    geometry.config = configuration
                database.write_two_view_geometry(*pycolmap.pair_id_to_image_pair(pair_id), geometry)
        output = tmp_path / label
        output.mkdir()
        points[label] = pycolmap.triangulate_points(pycolmap.Reconstruction(model), database_path,
                                                    scene / "images", output).num_points3D()
    assert points["calibrated"] > 50
    assert points["undefined"] == 0, "pycolmap triangulates UNDEFINED two-view geometries again: update the README"


def test_hloc_itself_reads_the_export(scene, tmp_path):
    """The same check with hloc's own reader, where hloc is importable (a developer's checkout on PYTHONPATH)."""
    hloc_io = pytest.importorskip("hloc.utils.io", reason="hloc is not installed (it is not on PyPI: put a "
                                  "checkout of cvg/Hierarchical-Localization on PYTHONPATH to run this check)")
    assert export(scene, tmp_path / "hloc", "--model", scene / "sparse" / "0").returncode == 0
    model = read_model(scene / "sparse" / "0")
    for image_id in model.reg_image_ids():
        image = model.images[image_id]
        keypoints = hloc_io.get_keypoints(tmp_path / "hloc" / "features.h5", image.name) + 0.5
        assert np.allclose(keypoints, [point.xy for point in image.points2D], atol=1e-4, rtol=0)
