"""Pose files, pose errors and localization scores (d2sfm.poses, d2sfm.pose_scores, d2sfm.evaluate)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from d2sfm.errors import D2sfmError
from d2sfm.localization.pose_scores import THRESHOLD_PRESETS, parse_thresholds, score_poses
from d2sfm.localization.poses import Pose, pose_errors, read_poses, write_poses


def random_pose(rng: np.random.Generator) -> Pose:
    x, y, z, w = Rotation.random(random_state=rng.integers(1 << 30)).as_quat()
    return Pose(np.array([w, x, y, z]), rng.normal(0, 10, 3))


def perturbed(pose: Pose, degrees: float, metres: float, rng: np.random.Generator) -> Pose:
    """The same camera turned by ``degrees`` about a random axis and moved by ``metres``."""
    axis = rng.normal(size=3)
    turn = Rotation.from_rotvec(np.radians(degrees) * axis / np.linalg.norm(axis)).as_matrix()
    rotation = turn @ pose.rotation
    direction = rng.normal(size=3)
    centre = pose.centre + metres * direction / np.linalg.norm(direction)
    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return Pose.from_centre(np.array([w, x, y, z]), centre)


def test_pose_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    poses = {f"IMG_{k}.jpg": random_pose(rng) for k in range(5)}
    write_poses(tmp_path / "poses.txt", poses.items())
    back = read_poses(tmp_path / "poses.txt")
    assert list(back) == list(poses)
    for name, pose in poses.items():
        assert np.allclose(back[name].qvec, pose.qvec) and np.allclose(back[name].tvec, pose.tvec)
        assert pose_errors(pose, back[name]) == pytest.approx((0.0, 0.0), abs=1e-5)


def test_pose_errors_measure_known_perturbations():
    rng = np.random.default_rng(1)
    for degrees, metres in [(0.5, 0.1), (3.0, 2.0), (40.0, 25.0)]:
        pose = random_pose(rng)
        position, rotation = pose_errors(pose, perturbed(pose, degrees, metres, rng))
        assert position == pytest.approx(metres, rel=1e-6)
        assert rotation == pytest.approx(degrees, rel=1e-5)


def test_scores_count_missing_queries_as_failures():
    rng = np.random.default_rng(2)
    truth = {f"q{k}": random_pose(rng) for k in range(4)}
    predicted = {"q0": perturbed(truth["q0"], 1.0, 0.3, rng),   # within (0.5 m, 2 deg)
                 "q1": perturbed(truth["q1"], 4.0, 0.8, rng),   # within (1 m, 5 deg)
                 "q2": perturbed(truth["q2"], 20.0, 3.0, rng),  # position fine for (5, 10) but rotation only (10, 25)
                 "extra": random_pose(rng)}                      # q3 missing; "extra" has no ground truth
    scores = score_poses(truth, predicted, THRESHOLD_PRESETS["aachen"])
    assert scores.recalls == pytest.approx([25.0, 50.0, 50.0, 75.0])
    assert scores.missing == ["q3"] and scores.unknown == ["extra"]
    assert "missing from the prediction" in scores.table()


def test_threshold_presets_and_custom_lists():
    assert parse_thresholds("aachen_v1_1") == [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)]
    assert parse_thresholds("inloc") == [(0.25, 10.0), (0.5, 10.0), (1.0, 10.0)]
    assert parse_thresholds("0.1,1;2,3") == [(0.1, 1.0), (2.0, 3.0)]
    with pytest.raises(D2sfmError, match="preset"):
        parse_thresholds("0.1;2")


def test_malformed_pose_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("IMG_1.jpg 1 0 0 0 0 0 0\nIMG_2.jpg 1 0 0\n")
    with pytest.raises(D2sfmError, match=r"bad.txt:2"):
        read_poses(path)


def test_evaluate_poses_command(tmp_path):
    rng = np.random.default_rng(3)
    truth = {f"q{k}.jpg": random_pose(rng) for k in range(3)}
    write_poses(tmp_path / "gt.txt", truth.items())
    write_poses(tmp_path / "pred.txt", [("q0.jpg", truth["q0.jpg"]), ("q1.jpg", perturbed(truth["q1.jpg"], 7, 2, rng))])
    run = subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "poses", "--gt", str(tmp_path / "gt.txt"),
                          "--pred", str(tmp_path / "pred.txt"), "--thresholds", "aachen",
                          "--json", str(tmp_path / "scores.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "(0.5 m, 2 deg):   33.3 %" in run.stdout and "(5 m, 10 deg):   66.7 %" in run.stdout
    assert (tmp_path / "scores.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "poses", "--gt", str(tmp_path / "none.txt"),
                          "--pred", str(tmp_path / "pred.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "none.txt" in bad.stderr
