"""``reconstruct --known-poses TRUE_CAMERAS``: the scene triangulated at the true poses, which no later stage
(the model's refinement and its bundle adjustment included) moves."""

import json
import subprocess
import sys

import numpy as np
import pycolmap
import pytest

from d2sfm.evaluation.ground_truth import read_truth
from d2sfm.synthetic.scene import render_scene
from tests.in_process import command_in_process

pytestmark = pytest.mark.integration


def test_the_model_keeps_the_known_poses_through_refinement(tmp_path, weights_path):
    scene = tmp_path / "scene"
    render_scene(scene, count=6, width=320, height=240, focal=256.0)
    result = subprocess.run(
        [sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--single-scale", "--conv", "winograd", "--quiet",
         "--weights", str(weights_path), "--camera-mode", "single", "--camera-model", "PINHOLE", "--camera-params",
         "256,256,160,120", "--known-poses", str(scene / "ground_truth")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "points triangulated at the known poses of 6 photos" in result.stdout
    truth = read_truth(scene / "ground_truth")
    model = pycolmap.Reconstruction(scene / "sparse" / "0")
    assert model.num_reg_images() == 6 and model.num_points3D() > 100
    for image in model.images.values():
        np.testing.assert_allclose(image.cam_from_world().rotation.matrix(), truth[image.name].rotation, atol=1e-9)
        np.testing.assert_allclose(image.projection_center(), truth[image.name].centre, atol=1e-9)
    stats = json.loads((scene / "stats.json").read_text())
    assert stats["model_refinement"][0]["settings"]["hold_poses"] is True
    assert stats["stage_settings"]["mapping"]["known_poses"]["path"] == str((scene / "ground_truth").resolve())
    assert stats["models"][0]["mean_reprojection_error"] < 1.0  # the right poses and K: points agree

    missing = command_in_process("d2sfm.reconstruct", scene, "--known-poses", tmp_path / "none", "--weights",
                                 weights_path)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "no such folder of known poses" in missing.stderr
