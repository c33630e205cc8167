"""``python -m d2sfm.localize aachen`` on miniature datasets in the benchmark's exact on-disk formats.

Two scenes with known truth: the embedded synthetic courtyard (3 of 10 views held out as queries) and the shared
Sacre Coeur photos, posed by a COLMAP SIFT reconstruction of all ten and scaled to metres, with the three
best-covered photos held out. Queries are made night-like (darker, colour cast, noise) as Aachen's are.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from d2sfm.evaluation.sift_baseline import sift_reconstruction
from d2sfm.io.images import list_images
from d2sfm.io.model_files import read_model
from d2sfm.localization.poses import read_poses
from d2sfm.localization.reference_model import read_intrinsics, read_nvm_poses
from d2sfm.localization.registration import register_queries, registration_options
from d2sfm.matching.pairs import read_pairs
from d2sfm.sfm.database import read_image_ids
from d2sfm.synthetic.scene import render_scene
from pipelines.mini_datasets import as_aachen, metric_scale, posed_images_from_model, write_mini_aachen
from tests.in_process import command_in_process

pytestmark = pytest.mark.integration


def localize(dataset: Path, output: Path, weights: Path, *extra, fresh: bool = False) -> subprocess.CompletedProcess:
    """Single scale and Winograd convolutions keep CI fast; the command's defaults are multi-scale and exact.

    The command's main in this process (2-4 s of interpreter start and imports less per run), or with ``fresh`` in
    a new ``python -m`` process as a user runs it: the module's first run and its first refusal."""
    args = ("aachen", "--dataset", dataset, "--output", output, "--weights", weights, "--single-scale", "--conv",
            "winograd", "--quiet", *extra)
    if not fresh:
        return command_in_process("d2sfm.localize", *args)
    return subprocess.run([sys.executable, "-m", "d2sfm.localize", *map(str, args)], capture_output=True, text=True)


def summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


@pytest.fixture(scope="module")
def courtyard_aachen(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("courtyard")
    render_scene(source, count=10, width=320, height=240, focal=256.0)  # 480x360 cost CI 1.5x, 640x480 2.7x
    truth = pycolmap.Reconstruction(source / "ground_truth")
    images = posed_images_from_model(truth, source / "images")
    database, queries = as_aachen(images, ["view_03.png", "view_06.png", "view_09.png"])
    return write_mini_aachen(tmp_path_factory.mktemp("aachen_courtyard"), database, queries)


@pytest.fixture(scope="module")
def courtyard_run(courtyard_aachen, weights_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("run") / "out"
    # the baseline of the refinement test
    first = localize(courtyard_aachen, output, weights_path, "--no-refine", fresh=True)
    assert first.returncode == 0, first.stderr
    return output, first


def test_written_formats_parse_back(courtyard_aachen):
    nvm = read_nvm_poses(courtyard_aachen / "3D-models" / "aachen_cvpr2018_db.nvm")
    intrinsics = read_intrinsics(courtyard_aachen / "3D-models" / "database_intrinsics.txt")
    assert sorted(nvm) == sorted(intrinsics) and len(nvm) == 7
    queries = read_intrinsics(courtyard_aachen / "queries" / "night_time_queries_with_intrinsics.txt")
    assert all(name.startswith("query/night/nexus5x/") for name in queries) and len(queries) == 3
    assert set(read_image_ids(courtyard_aachen / "database.db")) == set(nvm) | set(queries)


def test_courtyard_queries_are_localized(courtyard_run, courtyard_aachen):
    output, run = courtyard_run
    result = summary(output)
    print(run.stdout)
    assert result["localized"] == 3 and not result["failed"]
    assert result["scores"]["recall_percent"] == [100.0] * 4  # all within (0.5 m, 2 deg)
    submitted = read_poses(output / "Aachen_eval_[d2sfm].txt")
    assert sorted(submitted) == sorted(read_poses(courtyard_aachen / "query_ground_truth.txt"))
    for entry in result["per_query"]:
        assert entry["inliers"] >= 30 and entry["matches"] >= entry["inliers"]
    # the database model keeps the benchmark's poses: triangulation does not move the cameras
    nvm = read_nvm_poses(courtyard_aachen / "3D-models" / "aachen_cvpr2018_db.nvm")
    model = pycolmap.Reconstruction(output / "sparse-final")
    for image in model.images.values():
        if image.name in nvm:
            assert abs(image.cam_from_world().translation - nvm[image.name].tvec).max() < 1e-9


def test_rerun_resumes_without_redoing_work(courtyard_run, courtyard_aachen, weights_path):
    output, _ = courtyard_run
    before = (output / "Aachen_eval_[d2sfm].txt").read_text()
    again = localize(courtyard_aachen, output, weights_path, "--no-refine")
    assert again.returncode == 0, again.stderr
    for stage in ("extract", "match", "database", "triangulate", "register"):
        assert f"[{stage}] done earlier, skipped" in again.stdout
    assert (output / "Aachen_eval_[d2sfm].txt").read_text() == before


def test_rerun_with_other_settings_redoes_their_stage_and_what_follows(courtyard_run, courtyard_aachen,
                                                                       weights_path, tmp_path):
    """A rerun must not return the earlier poses for other registration options, nor the earlier database for
    other matching options: the first changed stage and the ones after it run again, the rest is kept."""
    output, _ = courtyard_run
    strict = tmp_path / "strict"
    shutil.copytree(output, strict)
    run = localize(courtyard_aachen, strict, weights_path, "--no-refine", "--min-inliers", "100000")
    assert run.returncode == 0, run.stderr
    for stage in ("extract", "match", "database", "triangulate"):
        assert f"[{stage}] done earlier, skipped" in run.stdout
    assert "[register]\n" in run.stdout and summary(strict)["localized"] == 0  # no query has that many inliers
    rematched = tmp_path / "rematched"
    shutil.copytree(output, rematched)
    run = localize(courtyard_aachen, rematched, weights_path, "--no-refine", "--ratio", "0.999")
    assert run.returncode == 0, run.stderr
    assert "[extract] done earlier, skipped" in run.stdout
    for stage in ("match", "database", "triangulate", "register"):
        assert f"[{stage}]\n" in run.stdout
    assert summary(rematched)["localized"] == 3


def test_refinement_of_database_and_queries(courtyard_run, courtyard_aachen, weights_path, tmp_path):
    """--refine on a finished run: the database is refined in place (its features and matches reused), the
    database is triangulated again with a lower reprojection error, and the queries stay localized."""
    output, _ = courtyard_run
    refined = tmp_path / "out"
    shutil.copytree(output, refined)
    run = localize(courtyard_aachen, refined, weights_path, "--refine")
    assert run.returncode == 0, run.stderr
    assert "[database] done earlier, skipped" in run.stdout and "[refine]\n" in run.stdout
    assert "[triangulate]\n" in run.stdout and "[register]\n" in run.stdout
    record = summary(refined)["refinement"]
    assert record["database"]["keypoints_moved"] > 0 and record["queries"]["keypoints_moved"] > 0
    assert summary(refined)["localized"] == 3 and summary(refined)["scores"]["recall_percent"] == [100.0] * 4
    raw_error = pycolmap.Reconstruction(output / "sparse-database").compute_mean_reprojection_error()
    refined_error = pycolmap.Reconstruction(refined / "sparse-database").compute_mean_reprojection_error()
    print(f"database triangulation: {raw_error:.3f} px raw, {refined_error:.3f} px refined; {record}")
    assert refined_error < 0.9 * raw_error


def test_retrieval_variant_reuses_features(courtyard_run, courtyard_aachen, weights_path, tmp_path):
    output, _ = courtyard_run
    shutil.copy(output / "features.h5", tmp_path / "features.h5")
    run = localize(courtyard_aachen, tmp_path, weights_path, "--pairs",
                   courtyard_aachen / "pairs-query-retrieval.txt", "--queries", "night")
    assert run.returncode == 0, run.stderr
    assert "[extract] done earlier, skipped" in run.stdout
    assert summary(tmp_path)["localized"] == 3


def test_bad_inputs_give_one_line(courtyard_aachen, weights_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(courtyard_aachen, broken)
    (broken / "3D-models" / "aachen_cvpr2018_db.nvm").unlink()
    run = localize(broken, tmp_path / "out1", weights_path, fresh=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "aachen_cvpr2018_db.nvm" in run.stderr and "datasets/aachen.md" in run.stderr

    shutil.copy(courtyard_aachen / "3D-models" / "aachen_cvpr2018_db.nvm", broken / "3D-models")
    with open(broken / "image_pairs_to_match.txt", "a") as handle:
        handle.write("db/1.jpg db/unknown.jpg\n")
    run = localize(broken, tmp_path / "out2", weights_path)
    assert run.returncode == 2 and "db/unknown.jpg" in run.stderr and run.stderr.count("\n") == 1

    run = localize(courtyard_aachen, tmp_path / "out3", weights_path, "--queries", "day")
    assert run.returncode == 2 and "--pairs" in run.stderr


@pytest.fixture(scope="module")
def sacre_coeur_aachen(sacre_coeur_images, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sacre_coeur_sift")
    models = sift_reconstruction(sacre_coeur_images, list_images(sacre_coeur_images), work)
    model = models[0]
    assert model.num_reg_images() == 10, "the SIFT reference reconstruction must hold all ten photos"
    images = posed_images_from_model(model, sacre_coeur_images, scale=metric_scale(model))
    best_covered = sorted(model.images.values(), key=lambda image: image.num_points3D, reverse=True)[:3]
    database, queries = as_aachen(images, [image.name for image in best_covered])
    return write_mini_aachen(tmp_path_factory.mktemp("aachen_sacre_coeur"), database, queries)


def test_sacre_coeur_night_queries_within_aachen_thresholds(sacre_coeur_aachen, weights_path, tmp_path):
    """Single-scale D2 at 800 px (for CI time: 1080 px took 72 s instead of 44 s on an AVX2 EPYC, with errors of
    0.3-0.7 m against 0.8-1.7 m) gives 30-40 inliers per night query here, at the edge of COLMAP's 30-inlier
    registration threshold; registration is relaxed to d2sfm's mapper values, as the D2-Net authors relaxed it for
    D2 (the benchmark README's Extended CMU Seasons settings)."""
    run = localize(sacre_coeur_aachen, tmp_path, weights_path, "--min-inliers", 15, "--min-inlier-ratio", 0.1,
                   "--max-edge", 800)
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    result = summary(tmp_path)
    errors = result["scores"]["errors"]
    print({name: f"{e[0]:.2f} m, {e[1]:.2f} deg" for name, e in errors.items()})
    assert result["localized"] == 3
    assert result["scores"]["recall_percent"][2] == 100.0  # all within (5 m, 10 deg)


def test_real_protocol_files_are_consistent(shared):
    """The benchmark's own database and pair lists: every name a pair list uses is an image of its database."""
    folder = shared / "data" / "aachen_local_features"
    for suffix in ("", "_v1_1"):
        names = set(read_image_ids(folder / f"database{suffix}.db"))
        pairs = read_pairs(folder / f"image_pairs_to_match{suffix}.txt")
        used = {n for p in pairs for n in p}
        assert used <= names
        assert any(n.startswith("query/night/") for n in used)
    retrieval = read_pairs(shared / "data" / "retrieval_pairs" / "aachen" / "pairs-query-netvlad50.txt")
    names = set(read_image_ids(folder / "database.db"))
    queries = {a for a, _ in retrieval}
    assert len(queries) == 922 and queries <= names


def test_v1_1_retrieval_variant_adds_day_queries_missing_from_the_database(tmp_path_factory, weights_path):
    """v1.1's database holds only night queries; day queries of the retrieval variant join a copy with the
    intrinsics of their query list, and the benchmark's file stays untouched."""
    source = tmp_path_factory.mktemp("courtyard_v11")
    render_scene(source, count=10, width=320, height=240, focal=256.0)  # what is tested is the file handling
    images = posed_images_from_model(pycolmap.Reconstruction(source / "ground_truth"), source / "images")
    database, queries = as_aachen(images, ["view_03.png", "view_06.png", "view_09.png"], night=False)
    dataset = write_mini_aachen(tmp_path_factory.mktemp("aachen_v11"), database, queries, version="1.1",
                                queries_in_database=False)
    before = (dataset / "database_v1_1.db").read_bytes()
    work = tmp_path_factory.mktemp("run_v11")
    run = localize(dataset, work, weights_path, "--version", "1.1", "--pairs", dataset / "pairs-query-retrieval.txt",
                   "--queries", "day")
    assert run.returncode == 0, run.stderr
    assert (dataset / "database_v1_1.db").read_bytes() == before
    result = summary(work)
    assert result["localized"] == 3 and result["scores"]["thresholds"] == [[0.25, 2.0], [0.5, 5.0], [5.0, 10.0]]
    assert (work / "Aachen_v1_1_eval_[d2sfm].txt").is_file()


def test_unreadable_images_are_reported_not_dropped(courtyard_run, courtyard_aachen, weights_path, tmp_path):
    """A corrupt database image and a corrupt query: listed in the log and the summary; the query still gets a
    line in the submission."""
    import h5py

    output, _ = courtyard_run
    dataset = tmp_path / "dataset"
    shutil.copytree(courtyard_aachen, dataset)
    broken_db, broken_query = "db/2.jpg", "query/night/nexus5x/view_06.jpg"
    for name in (broken_db, broken_query):
        (dataset / "images" / "images_upright" / name).write_bytes(b"not a jpeg")
    work = tmp_path / "out"
    work.mkdir()
    shutil.copy(output / "features.h5", work / "features.h5")
    with h5py.File(work / "features.h5", "a") as handle:  # as if these two had not been extracted yet
        del handle[broken_db], handle[broken_query]
    run = localize(dataset, work, weights_path)
    assert run.returncode == 0, run.stderr
    assert "skipped: " in run.stdout and "cannot be decoded" in run.stdout and "pairs skipped" in run.stdout
    result = summary(work)
    assert sorted(name for name, _ in result["unreadable"]) == [broken_db, broken_query]
    failed = {entry["name"]: entry for entry in result["failed"]}
    assert failed[broken_query]["reason"] == "image unreadable" and failed[broken_query]["fallback_image"]
    assert "view_06.jpg" in read_poses(work / "Aachen_eval_[d2sfm].txt")


def test_a_query_pose_does_not_depend_on_what_ran_before(courtyard_run):
    """The register stage on the finished run's database and triangulated model, twice in one process with
    pycolmap's random stream left elsewhere in between (as other RANSAC runs leave it): the same poses."""
    output, _ = courtyard_run
    queries = sorted(name for name in read_image_ids(output / "database.db") if name.startswith("query/"))

    def poses() -> dict:
        model, results = register_queries(output / "database.db", read_model(output / "sparse-database"), queries,
                                          registration_options(), progress=False)
        by_name = {image.name: image for image in model.images.values()}
        return {r.name: by_name[r.name].cam_from_world().matrix() for r in results if r.registered}

    first = poses()
    pycolmap.set_random_seed(12345)
    second = poses()
    assert len(first) == len(queries) and second.keys() == first.keys()
    for name, matrix in first.items():
        np.testing.assert_allclose(second[name], matrix, rtol=0, atol=1e-9, err_msg=name)
