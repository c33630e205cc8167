"""A scene folder written by an earlier release (0be182d, before the layered package) resumes under this code
without recomputing any finished stage, and its outputs and statistics stay as they were."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from d2sfm.synthetic.scene import render_scene

RELEASE_SCENE = Path(__file__).parent / "data" / "scene_0be182d"
STAGES = ("extract", "pairs", "match", "database", "refine", "mapping", "refine-model", "picture")
OUTPUTS = ("features.h5", "matches.h5", "pairs.txt", "database.db", "sparse/0/images.bin", "sparse/0/points3D.bin",
           "sparse/0/cameras.bin", "model.png")


def test_a_scene_written_by_the_release_before_resumes_without_recomputing(tmp_path, weights_path):
    scene = tmp_path / "scene"
    shutil.copytree(RELEASE_SCENE, scene, ignore=shutil.ignore_patterns("README.md"))
    render_scene(scene, count=6, width=320, height=240, focal=0.8 * 320)  # the release's photos, rendered again
    later = time.time() + 1  # git keeps no times: the release drew its picture after writing the model
    os.utime(scene / "model.png", (later, later))
    before = {name: (scene / name).read_bytes() for name in OUTPUTS}
    run = subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--single-scale", "--camera-mode",
                          "single", "--max-keypoints", "200", "--quiet", "--weights", str(weights_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for stage in STAGES:
        assert f"[{stage}] done earlier, skipped" in run.stdout, run.stdout
    assert [name for name in OUTPUTS if (scene / name).read_bytes() != before[name]] == []
    release = json.loads((RELEASE_SCENE / "stats.json").read_text())
    now = json.loads((scene / "stats.json").read_text())
    assert {key: now[key] for key in release} == release  # every statistic as the release wrote it
