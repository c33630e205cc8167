"""``reconstruct --camera-model PINHOLE --camera-params ... --refine-intrinsics ...`` on a rendered scene whose
calibration is known, from the command line and from Python."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

import d2sfm
from d2sfm.sfm.mapping import read_models
from d2sfm.synthetic.scene import render_scene
from tests.in_process import command_in_process

pytestmark = pytest.mark.integration

TRUE_K = [256.0, 256.0, 160.0, 120.0]  # render_scene's pinhole: focal 256 px, principal point at the centre
FAST = ("--single-scale", "--no-refine", "--conv", "winograd", "--quiet")


def reconstruct(scene, *args, weights):
    return subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(scene), *FAST, "--weights", str(weights),
                           *args], capture_output=True, text=True)


def test_known_intrinsics_are_kept_or_refined_as_asked(tmp_path, weights_path):
    scene = tmp_path / "scene"
    render_scene(scene, count=6, width=320, height=240, focal=256.0)
    given = ",".join(f"{value:g}" for value in TRUE_K)
    held = reconstruct(scene, "--camera-mode", "single", "--camera-model", "PINHOLE", "--camera-params", given,
                       "--refine-intrinsics", "none", weights=weights_path)
    assert held.returncode == 0, held.stderr
    stats = json.loads((scene / "stats.json").read_text())
    assert stats["stage_settings"]["database"]["camera_params"] == TRUE_K
    assert stats["stage_settings"]["mapping"]["refine_intrinsics"] == "none"
    cameras = stats["cameras"]
    assert (cameras["camera_model"], cameras["given_params"], cameras["refine_intrinsics"]) == (
        "PINHOLE", TRUE_K, "none")
    model = read_models(scene / "sparse")[0]
    assert model.num_reg_images() == 6
    assert [list(camera.params) for camera in model.cameras.values()] == [TRUE_K]  # held exactly
    assert cameras["largest_model"][0]["params"] == TRUE_K

    # the Python API, focal refined: the mapping (and only it) is done again; the principal point stays
    config = d2sfm.preset("d2-ss-unrefined")
    config = replace(config, features=replace(config.features, weights=str(weights_path), conv="winograd"),
                     run=replace(config.run, progress=False),
                     mapping=replace(config.mapping, camera_mode="single", camera_model="PINHOLE",
                                     camera_params=given, refine_intrinsics="focal"))
    result = d2sfm.reconstruct(scene, config)
    camera = next(iter(result.largest.cameras.values()))
    assert list(camera.params[2:]) == TRUE_K[2:]
    assert camera.params[0] != TRUE_K[0] and camera.params[0] == pytest.approx(TRUE_K[0], rel=0.15)
    assert result.statistics["stage_settings"]["mapping"]["refine_intrinsics"] == "focal"
    assert result.statistics["stage_seconds"].keys() >= {"extract", "mapping"}

    wrong = command_in_process("d2sfm.reconstruct", scene, *FAST, "--weights", weights_path, "--camera-model",
                               "PINHOLE", "--camera-params", "256,256,160")
    assert wrong.returncode != 0
    assert wrong.stderr.strip().count("\n") == 0
    assert "PINHOLE takes 4 parameters (fx, fy, cx, cy), 3 given" in wrong.stderr
