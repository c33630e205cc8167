"""Fault injection: ``reconstruct`` killed with SIGKILL at seeded random points of every stage and rerun each time
ends with the model of an uninterrupted run, and no temporary file of any interrupted write is left."""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from d2sfm.io.h5 import list_entries, read_features
from d2sfm.io.matches_h5 import matched_pairs, read_matches
from d2sfm.matching.pairs import read_pairs
from d2sfm.sfm.database import verified_pair_inliers
from d2sfm.sfm.mapping import read_models
from d2sfm.synthetic.scene import render_scene

from .conftest import FAST, leftovers

STAGES = ("extract", "pairs", "match", "database", "refine", "mapping", "refine-model", "picture")
KILLS_PER_STAGE = {"extract": 3, "database": 2, "refine": 2, "mapping": 2, "refine-model": 2}  # 1 elsewhere: 14


def kill_in_stage(scene: Path, stage: str, delay: float, weights: Path) -> str | None:
    """Run reconstruct and SIGKILL it ``delay`` seconds after it starts ``stage`` (or the first later stage it
    starts, when that one was finished by an earlier run), or as the next stage starts if that comes first: a
    resumed stage has less left to do than ``delay`` was drawn for, and a kill that waited past it could find the
    run finished, leaving no work for the kills still to come. Returns the stage it was in when killed (the last
    one it started), None when the run finished first. A run that ends any other way (an error after an earlier
    kill, a folder still locked by the killed run) fails the test with what it wrote on stderr."""
    errors = scene.parent / "stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--demo", *FAST, "--weights", str(weights)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started: queue.Queue[str | None] = queue.Queue()  # stage headers as they are printed; None at the end

    def read_headers() -> None:
        for line in process.stdout:
            header = line.strip()[1:-1] if line.startswith("[") and line.strip().endswith("]") else None
            if header in STAGES:
                started.put(header)
        started.put(None)

    reader = threading.Thread(target=read_headers, daemon=True)
    reader.start()
    killed_in = None
    while (header := started.get()) is not None:
        if STAGES.index(header) >= STAGES.index(stage):
            killed_in = header
            try:
                following = started.get(timeout=delay)
            except queue.Empty:
                following = None
            else:
                killed_in = following or killed_in
            if following is None and process.poll() is not None:  # finished within the delay
                killed_in = None
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    reader.join()
    process.stdout.close()
    assert process.returncode in (0, -signal.SIGKILL), (stage, process.returncode, errors.read_text()[-2000:])
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

    # What d2sfm writes is the uninterrupted run's, bit for bit (same machine): features and matches; and the
    # verified graph holds the same pairs with the same inlier counts.
    names = list_entries(finished_scene / "features.h5")
    assert list_entries(scene / "features.h5") == names
    for name in names:
        ours, theirs = read_features(scene / "features.h5", name), read_features(finished_scene / "features.h5", name)
        for field in ("keypoints", "scales", "scores", "descriptors"):
            assert np.array_equal(getattr(ours, field), getattr(theirs, field)), (name, field)
    assert matched_pairs(scene / "matches.h5") == matched_pairs(finished_scene / "matches.h5")
    for pair in read_pairs(finished_scene / "pairs.txt"):
        for ours, theirs in zip(read_matches(scene / "matches.h5", *pair), read_matches(finished_scene / "matches.h5",
                                                                                          *pair)):
            assert np.array_equal(ours, theirs), pair
    assert verified_pair_inliers(scene / "database.db") == verified_pair_inliers(finished_scene / "database.db")

    # The model: COLMAP's mapper is multithreaded and does not repeat itself to the last bit under load (see
    # d2sfm/sfm/mapping.py), so a rerun that maps again can give the same model in another frame: once in CI, all
    # 8 cameras' relative rotations equal to 4e-6, in a frame turned 25 degrees, with 243 points before model
    # refinement instead of 244. So the comparison is free of the frame: every camera relative to the first.
    poses, points, observations = model_summary(scene)
    expected_poses, expected_points, expected_observations = model_summary(finished_scene)
    assert sorted(poses) == sorted(expected_poses)
    assert abs(points - expected_points) <= 0.02 * expected_points
    assert abs(observations - expected_observations) <= 0.02 * expected_observations
    expected_relative = relative_poses(expected_poses)
    for name, relative in relative_poses(poses).items():
        np.testing.assert_allclose(relative, expected_relative[name], atol=1e-3, err_msg=name)
    shutil.rmtree(scene)


def relative_poses(poses: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each camera's pose relative to the first's (3x4: rotation, and translation in units of the baseline from the
    first camera to the second): the same for a model moved, turned or scaled as a whole."""
    def full(pose):
        return np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])

    names = sorted(poses)
    first = np.linalg.inv(full(poses[names[0]]))
    relative = {name: (full(poses[name]) @ first)[:3] for name in names}
    scale = np.linalg.norm(relative[names[1]][:, 3])
    return {name: np.hstack([pose[:, :3], pose[:, 3:] / scale]) for name, pose in relative.items()}
