"""``python -m d2sfm.localize inloc`` on a miniature InLoc built from the synthetic courtyard: cutouts with exact
per-pixel XYZ (the scans' ``.jpg.mat``), iPhone-like queries at the protocol's intrinsics, one query that sees
only sky and must still be answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2sfm.io.h5 import read_keypoints
from d2sfm.io.matches_h5 import read_matches
from d2sfm.localization.poses import Pose, pose_errors, read_poses
from d2sfm.localization.reference_model import Intrinsics
from d2sfm.matching.pairs import read_pairs
from d2sfm.refinement.database_refinement import read_refined_query_keypoints
from d2sfm.synthetic.scene import camera_poses, courtyard, look_at, render, render_xyz
from pipelines.inloc import IPHONE7_FOCAL_PER_WIDTH, cutout_pose, read_scan, scan_points
from pipelines.mini_datasets import PosedImage, write_mini_inloc
from tests.in_process import command_in_process

pytestmark = pytest.mark.integration
CUTOUT_SIZE, CUTOUT_FOCAL = (640, 480), 640 / (2 * np.tan(np.radians(30)))  # InLoc's 60 degree cutouts
QUERY_SIZE = (800, 600)


def posed(name: str, planes, rotation: np.ndarray, centre: np.ndarray, size, focal: float) -> PosedImage:
    pixels = render(planes, rotation, centre, *size, focal)
    intrinsics = Intrinsics("SIMPLE_PINHOLE", *size, (focal, size[0] / 2, size[1] / 2))
    return PosedImage(name, pixels, intrinsics, Pose.from_centre(_quaternion(rotation), centre))


def _quaternion(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z])


@pytest.fixture(scope="module")
def mini_inloc(tmp_path_factory) -> Path:
    planes = courtyard(0)
    views = camera_poses(11)
    cutouts = []
    for k in (0, 2, 3, 5, 7, 8, 10):
        rotation, centre = views[k]
        image = posed(f"database/cutouts/DUC1/{k:03d}/DUC_cutout_{k:03d}_0_0.jpg", planes, rotation, centre,
                      CUTOUT_SIZE, CUTOUT_FOCAL)
        cutouts.append((image, render_xyz(planes, rotation, centre, *CUTOUT_SIZE, CUTOUT_FOCAL)))
    query_focal = IPHONE7_FOCAL_PER_WIDTH * QUERY_SIZE[0]
    queries = [posed(f"query/iphone7/IMG_{1000 + k}.JPG", planes, *views[k], QUERY_SIZE, query_focal)
               for k in (1, 4, 9)]
    sky_centre = np.array([0.0, -5.0, 2.0])
    queries.append(posed("query/iphone7/IMG_2000.JPG", planes, look_at(sky_centre, sky_centre + [0, 0.2, 10]),
                         sky_centre, QUERY_SIZE, query_focal))
    return write_mini_inloc(tmp_path_factory.mktemp("inloc"), cutouts, queries)


def localize(dataset: Path, output: Path, weights: Path, *extra, fresh: bool = False) -> subprocess.CompletedProcess:
    """The command's main in this process (2-4 s of interpreter start and imports less per run), or with ``fresh``
    in a new ``python -m`` process as a user runs it: the module's first run and its refusal."""
    args = ("inloc", "--dataset", dataset, "--output", output, "--weights", weights, "--single-scale", "--conv",
            "winograd", "--quiet", "--cutout-focal", CUTOUT_FOCAL, *extra)
    if not fresh:
        return command_in_process("d2sfm.localize", *args)
    return subprocess.run([sys.executable, "-m", "d2sfm.localize", *map(str, args)], capture_output=True, text=True)


def test_cutout_pose_from_its_scan(mini_inloc):
    truth = read_poses(mini_inloc / "query_ground_truth.txt")  # noqa: F841 (the layout is complete)
    planes = courtyard(0)
    rotation, centre = camera_poses(11)[3]
    scan = read_scan(mini_inloc / "database/cutouts/DUC1/003/DUC_cutout_003_0_0.jpg.mat")
    assert np.allclose(scan, render_xyz(planes, rotation, centre, *CUTOUT_SIZE, CUTOUT_FOCAL), equal_nan=True,
                       atol=1e-4)
    position, angle = pose_errors(Pose.from_centre(_quaternion(rotation), centre), cutout_pose(scan, CUTOUT_FOCAL))
    assert position < 1e-3 and angle < 0.01


@pytest.fixture(scope="module")
def plain_run(mini_inloc, weights_path, tmp_path_factory) -> Path:
    """The localization without keypoint refinement: the baseline of the refinement test."""
    output = tmp_path_factory.mktemp("inloc_plain")
    run = localize(mini_inloc, output, weights_path, "--no-refine", fresh=True)
    assert run.returncode == 0, run.stderr
    return output


@pytest.fixture(scope="module")
def refined_run(plain_run, mini_inloc, weights_path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The default command (refinement is on) run on a copy of the plain run: it reuses the extraction and the
    matches and refines, so the two tests below share one extraction. Tests copy it before changing it."""
    output = tmp_path_factory.mktemp("inloc_refined") / "out"
    shutil.copytree(plain_run, output)
    return output, localize(mini_inloc, output, weights_path)


def test_queries_are_localized_and_every_query_answered(mini_inloc, refined_run, weights_path):
    output, run = refined_run
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    summary = json.loads((output / "summary.json").read_text())
    submitted = read_poses(output / "InLoc_eval_[d2sfm].txt")
    assert sorted(submitted) == ["IMG_1001.JPG", "IMG_1004.JPG", "IMG_1009.JPG", "IMG_2000.JPG"]
    assert [f["name"] for f in summary["failed"]] == ["query/iphone7/IMG_2000.JPG"]
    assert summary["failed"][0]["fallback_image"].startswith("database/cutouts/")
    errors = summary["scores"]["errors"]
    for name in ("IMG_1001.JPG", "IMG_1004.JPG", "IMG_1009.JPG"):
        assert errors[name][0] < 0.05 and errors[name][1] < 0.5, errors[name]
    assert summary["scores"]["recall_percent"] == [75.0, 75.0, 75.0]
    again = localize(mini_inloc, output, weights_path)
    assert "[localize] done earlier, skipped" in again.stdout
    assert read_poses(output / "InLoc_eval_[d2sfm].txt").keys() == submitted.keys()


def test_missing_scan_is_one_line(mini_inloc, weights_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mini_inloc, broken)
    (broken / "database/cutouts/DUC1/005/DUC_cutout_005_0_0.jpg.mat").unlink()
    earlier = tmp_path / "earlier"  # a finished run's folder: --overwrite with a broken dataset must not clear it
    earlier.mkdir()
    (earlier / "state.json").write_text("{}")
    (earlier / "features.h5").write_bytes(b"an earlier run's features")
    run = localize(broken, earlier, weights_path, "--overwrite", fresh=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "DUC_cutout_005_0_0.jpg.mat" in run.stderr and "datasets/inloc.md" in run.stderr
    assert (earlier / "features.h5").read_bytes() == b"an earlier run's features"


def matched_query_errors(dataset: Path, output: Path, refined: Path | None = None) -> np.ndarray:
    """Pixel distance from each matched query keypoint (detected, or refined for its pair) to where the truth puts
    its cutout keypoint's scan point (the query's true pose and intrinsics), over every query-cutout pair."""

    truth = read_poses(dataset / "query_ground_truth.txt")
    errors = []
    for query, cutout in read_pairs(output / "pairs.txt"):
        pose = truth[query.split("/")[-1]]
        matches, _ = read_matches(output / "matches.h5", query, cutout)
        keypoints, (width, height) = read_keypoints(output / "features.h5", query)
        if refined is not None:
            keypoints = read_refined_query_keypoints(refined, query, cutout, keypoints)
        xyz, valid = scan_points(read_scan(dataset / f"{cutout}.mat"),
                                 read_keypoints(output / "features.h5", cutout)[0][matches[:, 1]])
        in_camera = xyz[valid] @ pose.rotation.T + pose.tvec
        focal = IPHONE7_FOCAL_PER_WIDTH * width
        projected = focal * in_camera[:, :2] / in_camera[:, 2:] + [width / 2, height / 2]
        errors.append(np.linalg.norm(projected - keypoints[matches[valid, 0], :2], axis=1))
    return np.concatenate(errors)


def test_refined_queries_move_towards_the_truth(mini_inloc, plain_run, refined_run, weights_path, tmp_path):
    """Refinement (the default) moves the query keypoints (the cutouts' stay fixed: their 3D points come from the
    scans) closer to where the true pose puts their matched scan points, the queries are still localized, and a
    rerun with --no-refine localizes again from the detections."""
    refined, run = refined_run
    assert run.returncode == 0, run.stderr
    assert "[extract] done earlier, skipped" in run.stdout and "[refine]\n" in run.stdout
    assert "settings changed since the last run (localize: refined False -> 'patch')" in run.stdout
    assert "[localize]\n" in run.stdout
    before = matched_query_errors(mini_inloc, plain_run)
    after = matched_query_errors(mini_inloc, refined, refined / "refined_queries.h5")
    correct = before < 6.0  # matches of the right scan point; the wrong ones stay wrong
    print(f"matched query keypoints against the truth: median {np.median(before[correct]):.3f} px raw, "
          f"{np.median(after[correct]):.3f} px refined ({correct.sum()} correct matches)")
    assert np.median(after[correct]) <= 0.75 * np.median(before[correct])
    summary = json.loads((refined / "summary.json").read_text())
    assert summary["refinement"]["keypoints_moved"] > 0
    errors = summary["scores"]["errors"]
    for name in ("IMG_1001.JPG", "IMG_1004.JPG", "IMG_1009.JPG"):
        assert errors[name][0] < 0.05 and errors[name][1] < 0.5, errors[name]
    detected = read_keypoints(refined / "features.h5", "query/iphone7/IMG_1001.JPG")[0]
    for cutout in read_pairs(refined / "pairs.txt")[:3]:
        moved = read_refined_query_keypoints(refined / "refined_queries.h5", *cutout, detected)
        assert moved.shape == detected.shape and 0 < np.abs(moved - detected).max() < 8

    undone_folder = tmp_path / "undone"
    shutil.copytree(refined, undone_folder)
    undone = localize(mini_inloc, undone_folder, weights_path, "--no-refine")
    assert undone.returncode == 0, undone.stderr
    assert "(localize: refined 'patch' -> False)" in undone.stdout and "[localize]\n" in undone.stdout
    assert json.loads((undone_folder / "summary.json").read_text())["refinement"] is None
