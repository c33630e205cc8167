"""``python -m d2sfm.localize inloc`` on a miniature InLoc built from the synthetic courtyard: cutouts with exact
per-pixel XYZ (the scans' ``.jpg.mat``), iPhone-like queries at the protocol's intrinsics, one query that sees
only sky and must still be answered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2sfm.poses import Pose, pose_errors, read_poses
from d2sfm.reference_model import Intrinsics
from d2sfm.synthetic import camera_poses, courtyard, look_at, render, render_xyz
from pipelines.inloc import IPHONE7_FOCAL_PER_WIDTH, cutout_pose, read_scan
from pipelines.mini_datasets import PosedImage, write_mini_inloc

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


def localize(dataset: Path, output: Path, weights: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2sfm.localize", "inloc", "--dataset", str(dataset), "--output",
                           str(output), "--weights", str(weights), "--single-scale", "--conv", "winograd", "--quiet",
                           "--cutout-focal", str(CUTOUT_FOCAL), *map(str, extra)], capture_output=True, text=True)


def test_cutout_pose_from_its_scan(mini_inloc):
    truth = read_poses(mini_inloc / "query_ground_truth.txt")  # noqa: F841 (the layout is complete)
    planes = courtyard(0)
    rotation, centre = camera_poses(11)[3]
    scan = read_scan(mini_inloc / "database/cutouts/DUC1/003/DUC_cutout_003_0_0.jpg.mat")
    assert np.allclose(scan, render_xyz(planes, rotation, centre, *CUTOUT_SIZE, CUTOUT_FOCAL), equal_nan=True,
                       atol=1e-4)
    position, angle = pose_errors(Pose.from_centre(_quaternion(rotation), centre), cutout_pose(scan, CUTOUT_FOCAL))
    assert position < 1e-3 and angle < 0.01


def test_queries_are_localized_and_every_query_answered(mini_inloc, weights_path, tmp_path):
    run = localize(mini_inloc, tmp_path, weights_path)
    assert run.returncode == 0, run.stderr
    print(run.stdout)
    summary = json.loads((tmp_path / "summary.json").read_text())
    submitted = read_poses(tmp_path / "InLoc_eval_[d2sfm].txt")
    assert sorted(submitted) == ["IMG_1001.JPG", "IMG_1004.JPG", "IMG_1009.JPG", "IMG_2000.JPG"]
    assert [f["name"] for f in summary["failed"]] == ["query/iphone7/IMG_2000.JPG"]
    assert summary["failed"][0]["fallback_image"].startswith("database/cutouts/")
    errors = summary["scores"]["errors"]
    for name in ("IMG_1001.JPG", "IMG_1004.JPG", "IMG_1009.JPG"):
        assert errors[name][0] < 0.05 and errors[name][1] < 0.5, errors[name]
    assert summary["scores"]["recall_percent"] == [75.0, 75.0, 75.0]
    again = localize(mini_inloc, tmp_path, weights_path)
    assert "[localize] done earlier, skipped" in again.stdout
    assert read_poses(tmp_path / "InLoc_eval_[d2sfm].txt").keys() == submitted.keys()


def test_missing_scan_is_one_line(mini_inloc, weights_path, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(mini_inloc, broken)
    (broken / "database/cutouts/DUC1/005/DUC_cutout_005_0_0.jpg.mat").unlink()
    run = localize(broken, tmp_path / "out", weights_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "DUC_cutout_005_0_0.jpg.mat" in run.stderr and "datasets/inloc.md" in run.stderr
