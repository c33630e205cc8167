"""``python -m d2sfm.evaluate gt --compare`` on a rendered scene with its true cameras: every method reconstructs
with the known K, is scored against the truth, and a rerun skips what is finished."""

import json
import subprocess
import sys

import pycolmap
import pytest

from d2sfm.synthetic.scene import render_scene

pytestmark = pytest.mark.integration


def compare(scene, output, weights, *more):
    return subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "gt", "--compare", "--images", str(scene / "images"),
                           "--gt", str(scene / "ground_truth"), "--output", str(output), "--methods",
                           "d2-ss", "sift", "--conv", "winograd", "--weights", str(weights), "--quiet",
                           *more], capture_output=True, text=True)


def test_compare_scores_every_method_with_the_known_intrinsics(tmp_path, weights_path):
    scene = tmp_path / "scene"
    render_scene(scene, count=8, width=480, height=360, focal=384.0)
    output = tmp_path / "compare"
    first = compare(scene, output, weights_path)
    assert first.returncode == 0, first.stderr
    assert "known K 384,384,240,180 given to every method" in first.stdout
    report = json.loads((output / "gt_compare.json").read_text())
    assert report["cameras"]["camera_params"] == "384,384,240,180"
    assert list(report["methods"]) == ["d2sfm SS", "COLMAP SIFT"]  # in METHODS order
    for label, row in report["methods"].items():
        assert row["registered"] == "8/8", label
        assert row["median_rotation_error_deg"] < 1.0 and row["max_position_error_share"] < 0.05, label
        assert 0 <= row["auc@1deg"] <= row["auc@10deg"] <= 1 and row["auc@10deg"] > 0.8, label
    for kind in ("d2-ss", "sift"):  # the true K held fixed in every model, through refinement too
        model = pycolmap.Reconstruction(output / kind / "sparse" / "0")
        assert [list(camera.params) for camera in model.cameras.values()] == [[384.0, 384.0, 240.0, 180.0]]
    stats = json.loads((output / "d2-ss" / "stats.json").read_text())
    assert stats["cameras"]["largest_model"][0]["params"] == [384.0, 384.0, 240.0, 180.0]
    table = (output / "gt_compare.md").read_text()
    assert table.count("\n") == 4 and "COLMAP SIFT" in table

    again = compare(scene, output, weights_path)
    assert again.returncode == 0, again.stderr
    assert "[reconstruct d2-ss] done earlier, skipped" in again.stdout
    assert "[reconstruct sift] done earlier, skipped" in again.stdout
    assert json.loads((output / "gt_compare.json").read_text())["methods"] == report["methods"]
