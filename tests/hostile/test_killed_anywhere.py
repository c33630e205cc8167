"""Fault injection: ``reconstruct`` killed with SIGKILL at seeded random points of every stage and rerun each time
ends with the model of an uninterrupted run, and no temporary file of any interrupted write is left."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from d2sfm.sfm.mapping import read_models
from d2sfm.synthetic.scene import render_scene

from .conftest import FAST, leftovers

STAGES = ("extract", "pairs", "match", "database", "refine", "mapping", "refine-model", "picture")
KILLS_PER_STAGE = {"extract": 3, "database": 2, "refine": 2, "mapping": 2, "refine-model": 2}  # 1 elsewhere: 14


def kill_in_stage(scene: Path, stage: str, delay: float, weights: Path) -> str | None:
    """Run reconstruct and SIGKILL it ``delay`` seconds after it starts ``stage`` (or the first later stage it
    starts, when that one was finished by an earlier run); returns the stage it was in when killed (the last one
    it started), None when the run finished first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--demo", *FAST, "--weights", str(weights)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    killed_in = None
    for line in process.stdout:  # after the kill: the rest of what it printed, up to its death
        started = line.strip()[1:-1] if line.startswith("[") and line.strip().endswith("]") else None
        if started not in STAGES:
            continue
        if killed_in is None and STAGES.index(started) >= STAGES.index(stage):
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
        if killed_in is not None or STAGES.index(started) >= STAGES.index(stage):
            killed_in = started
    process.wait()
    process.stdout.close()
    return killed_in if process.returncode == -signal.SIGKILL else None


def model_summary(scene: Path) -> tuple[dict, int, int]:
    model = read_models(scene / "sparse")[0]
    poses = {image.name: image.cam_from_world().matrix() for image in model.images.values() if image.has_pose}
    return poses, model.num_points3D(), model.compute_num_observations()


def test_sigkill_at_random_points_of_every_stage_then_rerun_gives_the_uninterrupted_model(
        finished_scene, tmp_path, weights_path):
    scene = tmp_path / "killed"
    render_scene(scene, count=8, width=320, height=240, focal=256.0)  # the finished scene's photos, rendered again
    seconds = {**{stage: 0.05 for stage in STAGES},
               **__import__("json").loads((finished_scene / "stats.json").read_text())["stage_seconds"]}
    rng = random.Random(34)
    killed_in = []
    for stage in STAGES:
        for _ in range(KILLS_PER_STAGE.get(stage, 1)):
            where = kill_in_stage(scene, stage, rng.uniform(0, 0.9 * seconds[stage]), weights_path)
            if where is not None:
                killed_in.append(where)
    print("killed in:", killed_in)  # for the log
    assert len(killed_in) >= 10 and len(set(killed_in)) >= 5, killed_in

    final = subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--demo", *FAST, "--weights",
                            str(weights_path)], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert leftovers(scene) == []

    poses, points, observations = model_summary(scene)
    expected_poses, expected_points, expected_observations = model_summary(finished_scene)
    assert sorted(poses) == sorted(expected_poses)
    assert (points, observations) == (expected_points, expected_observations)
    for name, pose in poses.items():
        np.testing.assert_allclose(pose, expected_poses[name], atol=1e-6, err_msg=name)  # same machine, same run
    shutil.rmtree(scene)
