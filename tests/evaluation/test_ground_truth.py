"""The ground-truth scorer on cameras built from the truth (zero error) and perturbed by known amounts."""

import json
import math
import subprocess
import sys

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from d2sfm.errors import D2sfmError
from d2sfm.evaluation.ground_truth import (
    EstimatedCamera,
    TruthCamera,
    pose_auc,
    read_truth,
    scene_extent,
    score_cameras,
    score_model,
    shared_pinhole,
)
from d2sfm.sfm.angles import direction_angle_deg, rotation_angle_deg
from d2sfm.synthetic.scene import render_scene

K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])


def arc_truth(count=8) -> dict[str, TruthCamera]:
    """Cameras on an arc of radius 5 looking at the origin (units: metres)."""
    truth = {}
    for i in range(count):
        angle = math.radians(-60 + 120 * i / (count - 1))
        centre = np.array([5 * math.sin(angle), 0.3 * (i % 3), -5 * math.cos(angle)])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross([0, 1, 0], forward)
        right /= np.linalg.norm(right)
        rotation = np.stack([right, np.cross(forward, right), forward])  # rows: camera axes in world
        truth[f"{i:04d}.jpg"] = TruthCamera(f"{i:04d}.jpg", K, rotation, centre, 640, 480)
    return truth


SIMILARITY = (2.5, Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix(), np.array([1.0, -4.0, 9.0]))


def as_estimated(truth, changes=None) -> dict[str, EstimatedCamera]:
    """The true cameras in another frame (x' = s R x + t), as a reconstruction has them; ``changes`` modifies
    named cameras in the true frame first: name -> (rotation error about y in degrees, centre offset)."""
    scale, rotation, translation = SIMILARITY
    estimated = {}
    for name, camera in truth.items():
        camera_rotation, centre = camera.rotation, camera.centre
        if name in (changes or {}):
            degrees, offset = changes[name]
            camera_rotation = Rotation.from_euler("y", degrees, degrees=True).as_matrix() @ camera_rotation
            centre = centre + offset
        estimated[name] = EstimatedCamera(camera_rotation @ rotation.T, scale * rotation @ centre + translation)
    return estimated


def test_cameras_of_the_truth_score_zero_error_and_full_auc():
    truth = arc_truth()
    score = score_cameras(as_estimated(truth), truth)
    assert score.registered == score.total == 8 and score.aligned and score.alignment_inliers == 8
    for camera in score.cameras:
        assert camera.rotation_error_deg == pytest.approx(0, abs=1e-6)
        assert camera.position_error == pytest.approx(0, abs=1e-9)
    assert score.pairs == 28 and all(value == pytest.approx(1.0) for value in score.auc.values())


def test_known_perturbations_are_measured_and_one_wrong_camera_does_not_move_the_others():
    truth = arc_truth()
    extent = scene_extent(truth)
    far = np.array([0.0, 0.2 * extent, 0.0])  # four times the default inlier threshold (5% of the extent)
    score = score_cameras(as_estimated(truth, {"0002.jpg": (2.0, np.zeros(3)), "0005.jpg": (0.0, far)}), truth)
    errors = {camera.name: camera for camera in score.cameras}
    assert errors["0002.jpg"].rotation_error_deg == pytest.approx(2.0, abs=1e-6)
    assert errors["0005.jpg"].position_error == pytest.approx(0.2 * extent, rel=1e-6)
    assert errors["0005.jpg"].position_error_share == pytest.approx(0.2, rel=1e-6)
    assert not errors["0005.jpg"].alignment_inlier and score.alignment_inliers == 7
    for name, camera in errors.items():
        if name != "0005.jpg":
            assert camera.position_error == pytest.approx(0, abs=1e-6), name
        if name != "0002.jpg":
            assert camera.rotation_error_deg == pytest.approx(0, abs=1e-6), name
    assert score.summary["max_position_error"] == pytest.approx(0.2 * extent, rel=1e-6)
    assert score.summary["median_position_error"] == pytest.approx(0, abs=1e-6)


def test_relative_pose_auc_of_a_rotated_camera():
    truth = arc_truth()
    score = score_cameras(as_estimated(truth, {"0003.jpg": (2.0, np.zeros(3))}), truth)
    exact = (28 - 7) / 28  # the 7 pairs with camera 3 are 2 degrees off (rotation; direction at most 2), the rest 0
    # the recall curve: exact from 0 deg, linear to 22/28 at 2 deg (the curve joins its points, as SuperGlue's
    # pose_auc does), 1 from 2 deg on; at 1 deg it holds at the recall below the threshold
    assert score.auc["1"] == pytest.approx(exact, abs=1e-6)
    assert score.auc["3"] == pytest.approx((2 * exact + 1 / 28 + 1) / 3, abs=1e-6)
    assert score.auc["10"] == pytest.approx((2 * exact + 1 / 28 + 8) / 10, abs=1e-6)


def test_unregistered_cameras_count_as_failures():
    truth = arc_truth()
    estimated = as_estimated(truth)
    del estimated["0000.jpg"], estimated["0001.jpg"]
    score = score_cameras(estimated, truth)
    assert (score.registered, score.total) == (6, 8) and score.summary["registered"] == "6/8"
    assert all(value == pytest.approx(15 / 28) for value in score.auc.values())  # 13 of 28 pairs lack an image
    assert not score_cameras({name: estimated[name] for name in ["0002.jpg", "0003.jpg"]}, truth).aligned


def test_pose_auc():
    assert pose_auc([0.0, 0.0, math.inf, math.inf]) == {"1": 0.5, "3": 0.5, "5": 0.5, "10": 0.5}
    assert pose_auc([0.5], (1.0,)) == {"1": pytest.approx(0.75)}  # recall from 0 (0 deg) to 1 (0.5 deg), then 1
    assert pose_auc([], (1.0,)) == {"1": 0.0}


def test_strecha_files_are_read_as_camera_to_world(tmp_path):
    truth = arc_truth(3)
    write_strecha(tmp_path, truth, 12)
    read = read_truth(tmp_path)
    assert sorted(read) == sorted(truth)
    for name, camera in read.items():
        np.testing.assert_allclose(camera.rotation, truth[name].rotation, atol=1e-12)
        np.testing.assert_allclose(camera.centre, truth[name].centre, atol=1e-12)
        assert (camera.width, camera.height) == (640, 480)
    assert shared_pinhole(read) == "500,510,320,240"
    (tmp_path / "bad.jpg.camera").write_text("1 2 3\n")
    with pytest.raises(D2sfmError, match="bad.jpg.camera: not a Strecha camera file"):
        read_truth(tmp_path)
    with pytest.raises(D2sfmError, match="no such ground-truth folder"):
        read_truth(tmp_path / "missing")


def write_strecha(folder, truth, digits):
    for camera in truth.values():
        rows = [*camera.K.tolist(), [0, 0, 0], *camera.rotation.T.tolist(), camera.centre.tolist(), [640, 480]]
        text = "\n".join(" ".join(f"{v:.{digits}g}" for v in row) for row in rows)
        (folder / f"{camera.name}.camera").write_text(text)


def test_small_errors_are_measured_against_a_truth_written_with_six_digits(tmp_path):
    """Strecha's files hold 6 significant digits: the truth read back must not add an error floor (acos of the
    rounded cosine put it at ~0.08 degree, and AUC@1 of the exact cameras at 0.95)."""
    exact = arc_truth()
    write_strecha(tmp_path, exact, 6)
    truth = read_truth(tmp_path)
    for camera in truth.values():
        np.testing.assert_allclose(camera.rotation @ camera.rotation.T, np.eye(3), atol=1e-12)
    score = score_cameras(as_estimated(exact), truth)
    assert max(camera.rotation_error_deg for camera in score.cameras) < 1e-3
    assert score.auc["1"] > 0.999
    turned = score_cameras(as_estimated(exact, {"0003.jpg": (0.01, np.zeros(3))}), truth)
    assert {c.name: c for c in turned.cameras}["0003.jpg"].rotation_error_deg == pytest.approx(0.01, abs=1e-3)


def test_angles_keep_their_precision_when_small():
    for degrees in (1e-5, 1e-3, 0.1, 90.0, 179.0):
        rotation = Rotation.from_rotvec([0.0, 0.0, math.radians(degrees)]).as_matrix()
        assert rotation_angle_deg(rotation) == pytest.approx(degrees, rel=1e-6)
        assert direction_angle_deg(np.array([1.0, 0, 0]), rotation[:, 0] * 3) == pytest.approx(degrees, rel=1e-6)
    assert direction_angle_deg(np.zeros(3), np.ones(3)) == 180.0


@pytest.fixture(scope="module")
def rendered_truth(tmp_path_factory):
    scene = tmp_path_factory.mktemp("rendered")
    render_scene(scene, count=5, width=64, height=48, focal=48.0)
    return scene / "ground_truth"


def test_a_colmap_model_as_truth_and_the_command(rendered_truth, tmp_path):
    model = pycolmap.Reconstruction(rendered_truth)
    assert score_model(model, read_truth(rendered_truth)).summary["max_position_error"] == pytest.approx(0, abs=1e-9)
    scale, rotation, translation = SIMILARITY
    model.transform(pycolmap.Sim3d(scale, pycolmap.Rotation3d(rotation), translation))  # another frame: no error
    moved = next(iter(model.images.values()))
    turned = Rotation.from_euler("x", 1.5, degrees=True).as_matrix() @ moved.cam_from_world().rotation.matrix()
    centre = moved.projection_center()  # kept: the camera turns on the spot
    moved.frame.rig_from_world = pycolmap.Rigid3d(pycolmap.Rotation3d(turned), -turned @ centre)
    model.write_text(tmp_path)
    result = subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "gt", "--model", str(tmp_path), "--gt",
                             str(rendered_truth), "--json", str(tmp_path / "score.json")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "registered 5/5" in result.stdout and "relative pose AUC" in result.stdout
    score = json.loads((tmp_path / "score.json").read_text())
    errors = {camera["name"]: camera["rotation_error_deg"] for camera in score["cameras"]}
    assert errors.pop(moved.name) == pytest.approx(1.5, abs=1e-3)
    assert max(errors.values()) < 1e-3

    wrong = subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "gt", "--model", str(tmp_path / "none"), "--gt",
                            str(rendered_truth)], capture_output=True, text=True)
    assert wrong.returncode != 0 and wrong.stderr.strip().count("\n") == 0 and "none" in wrong.stderr
