"""``--ray`` on d2sfm.extract, d2sfm.match, d2sfm.reconstruct and d2sfm.localize: a local Ray cluster of 2 workers
on this machine gives the features, matches, models and poses of the single-process run, resumes, collects what a
killed run finished, and survives a worker killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pycolmap
import pytest

from d2sfm.cluster.ray_backend import shard_folder
from d2sfm.io.h5 import FeatureWriter, list_entries, read_features, read_settings
from d2sfm.io.matches_h5 import MatchWriter, read_matches
from d2sfm.localization.poses import pose_errors, read_poses
from d2sfm.matching.pairs import exhaustive_pairs, read_pairs, write_pairs
from d2sfm.synthetic.scene import render_scene
from pipelines.mini_datasets import as_aachen, posed_images_from_model, write_mini_aachen

pytestmark = pytest.mark.integration
FAST = ["--max-edge", "256", "--quiet"]


# Every process computes with one thread, like each 1-CPU Ray worker: the runs then do the same float operations in
# the same order on whatever CPU this is, and their outputs are equal without depending on oneDNN's or the BLAS's
# threading (results are compared with each other, never with stored numbers).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_extract(*args, weights):
    return subprocess.run([sys.executable, "-m", "d2sfm.extract", *map(str, args), "--weights", str(weights)],
                          capture_output=True, text=True, env=ONE_THREAD)


def run_side_by_side(*commands) -> list[subprocess.CompletedProcess]:
    """Run the commands at the same time (one-thread processes): the single-process baseline would leave a core
    idle beside it, and neither run's results depend on the other."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
                 for command in commands]
    outputs = [process.communicate(timeout=600) for process in processes]
    return [subprocess.CompletedProcess(command, process.returncode, out, err)
            for command, process, (out, err) in zip(commands, processes, outputs)]


def assert_same_features(path_a, path_b):
    names = sorted(list_entries(path_a))
    assert names == sorted(list_entries(path_b))
    for name in names:
        a, b = read_features(path_a, name), read_features(path_b, name)
        for field in ("keypoints", "scales", "scores", "descriptors", "global_descriptor"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name}: {field}")
        assert a.image_size == b.image_size


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sacre_coeur_images):
    folder = tmp_path_factory.mktemp("cluster") / "images"
    folder.mkdir()
    for path in sorted(sacre_coeur_images.glob("*.jpg"))[:6]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def single_process(photos, weights_path):
    output = photos.parent / "single.h5"
    assert run_extract(photos, "-o", output, *FAST, weights=weights_path).returncode == 0
    return output


def test_ray_workers_give_the_single_process_features_and_resume(photos, single_process, weights_path, tmp_path):
    output = tmp_path / "features.h5"
    first = run_extract(photos, "-o", output, *FAST, "--ray", "--ray-workers", "2", weights=weights_path)
    assert first.returncode == 0, first.stderr
    assert "6 images extracted, 0 already done, 0 failed" in first.stdout
    assert_same_features(output, single_process)
    assert not shard_folder(output).exists()  # the shards were moved into features.h5
    again = run_extract(photos, "-o", output, *FAST, "--ray", weights=weights_path)
    assert again.returncode == 0 and "0 images extracted, 6 already done" in again.stdout
    # more workers than the local cluster's CPUs would wait for ever: one line instead
    too_many = run_extract(photos, "-o", tmp_path / "other.h5", *FAST, "--ray", "--ray-workers",
                           str(os.cpu_count() + 1), weights=weights_path)
    assert too_many.returncode == 2 and too_many.stderr.count("\n") == 1, too_many.stderr
    assert f"--ray-workers {os.cpu_count() + 1} needs" in too_many.stderr


def test_images_a_killed_run_left_in_its_shards_are_collected_not_redone(photos, single_process, weights_path,
                                                                         tmp_path):
    output = tmp_path / "features.h5"
    settings = read_settings(single_process)
    shard = shard_folder(output) / "worker-1.h5"
    shard.parent.mkdir()
    writer = FeatureWriter(shard, {k: v for k, v in settings.items() if k != "descriptor_dtype"})
    finished = sorted(list_entries(single_process))[:2]
    for name in finished:  # what a worker had written when the whole run was killed
        writer.write(name, read_features(single_process, name))
    run = run_extract(photos, "-o", output, *FAST, "--ray", "--ray-workers", "2", weights=weights_path)
    assert run.returncode == 0, run.stderr
    assert "collected 2 image(s) an interrupted run had finished" in run.stdout
    assert_same_features(output, single_process)
    assert not shard.parent.exists()


def test_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost(photos, single_process, weights_path, tmp_path):
    output = tmp_path / "features.h5"
    process = subprocess.Popen([sys.executable, "-m", "d2sfm.extract", str(photos), "-o", str(output), *FAST,
                                "--ray", "--ray-workers", "2", "--ray-batch", "2", "--weights", str(weights_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and process.poll() is None:
        shards = list(shard_folder(output).glob("worker-*.h5")) if shard_folder(output).is_dir() else []
        written = any(shard.stat().st_size > 100_000 for shard in shards)  # at least one image in a shard
        busy = subprocess.run(["pgrep", "-f", "ray::ExtractionWorker.extract"], capture_output=True, text=True)
        workers = busy.stdout
        if written and workers.split():
            killed = int(workers.split()[0])
            os.kill(killed, signal.SIGKILL)  # a worker process lost in the middle of its batch
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    assert process.returncode == 0, stderr
    assert "6 images extracted, 0 already done, 0 failed" in stdout
    assert_same_features(output, single_process)


def test_ray_matching_gives_the_single_process_matches_and_collects_shards(photos, single_process, weights_path,
                                                                             tmp_path):
    names = sorted(list_entries(single_process))
    pairs = exhaustive_pairs(names)
    pair_list = tmp_path / "pairs.txt"
    write_pairs(pair_list, pairs)

    def run_match(output, *extra):
        return subprocess.run([sys.executable, "-m", "d2sfm.match", str(single_process), str(pair_list), "-o",
                               str(output), "--quiet", *extra], capture_output=True, text=True, env=ONE_THREAD)

    assert run_match(tmp_path / "single.h5").returncode == 0
    output = tmp_path / "matches.h5"
    left_by_a_killed_run = shard_folder(output) / "worker-0.h5"
    left_by_a_killed_run.parent.mkdir()
    MatchWriter(left_by_a_killed_run).copy_from(tmp_path / "single.h5")  # every pair, as if matched before
    with h5py.File(left_by_a_killed_run, "a") as handle:
        for key in list(handle)[1:]:
            del handle[key]  # keep only the pairs of the first image
    kept = len(names) - 1
    run = run_match(output, "--ray", "--ray-workers", "2", "--ray-batch", "4")
    assert run.returncode == 0, run.stderr
    assert f"collected {kept} pair(s) an interrupted run had matched" in run.stdout
    assert f"{len(pairs)} pairs matched" in run.stdout and not shard_folder(output).exists()
    for name0, name1 in pairs:
        ours, theirs = read_matches(output, name0, name1), read_matches(tmp_path / "single.h5", name0, name1)
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
    again = run_match(output, "--ray")
    assert again.returncode == 0 and f"0 pairs matched, {len(pairs)} already done" in again.stdout


def assert_same_matches(path_a, path_b, pairs):
    for name0, name1 in pairs:
        ours, theirs = read_matches(path_a, name0, name1), read_matches(path_b, name0, name1)
        np.testing.assert_array_equal(ours[0], theirs[0], err_msg=f"{name0} {name1}")


def assert_same_model(path_a, path_b):
    """Equal inputs give models of the same images and about the same points: COLMAP's geometric verification is
    randomised (seeding it pins one outcome, on which its multithreaded mapper is no more repeatable)."""
    a, b = pycolmap.Reconstruction(path_a), pycolmap.Reconstruction(path_b)
    registered = lambda model: sorted(image.name for image in model.images.values() if image.has_pose)  # noqa: E731
    assert registered(a) == registered(b)
    assert abs(a.num_points3D() - b.num_points3D()) < 0.1 * b.num_points3D()


@pytest.fixture(scope="module")
def small_courtyard(tmp_path_factory):
    """The courtyard at 320x240 (the hostile tests' size): what Ray changes is tested, at a price CI can pay."""
    source = tmp_path_factory.mktemp("courtyard")
    render_scene(source, count=8, width=320, height=240, focal=256.0)
    return source


def test_reconstruct_on_ray_gives_the_single_process_model(small_courtyard, weights_path, tmp_path):
    # Keypoint refinement runs in the main process with or without Ray, so --no-refine spends CI time only on what
    # Ray changes (extraction and matching).
    def reconstruct(scene, *extra):
        return [sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--images", str(small_courtyard / "images"),
                "--single-scale", "--camera-mode", "single", "--no-refine", "--weights", str(weights_path),
                "--quiet", *extra]

    single, clustered = run_side_by_side(reconstruct(tmp_path / "single"),
                                         reconstruct(tmp_path / "ray", "--ray", "--ray-workers", "2"))
    assert single.returncode == 0, single.stderr
    assert clustered.returncode == 0, clustered.stderr
    assert "8 image(s) to extract, 0 done earlier" in clustered.stdout
    assert_same_features(tmp_path / "ray" / "features.h5", tmp_path / "single" / "features.h5")
    assert (tmp_path / "ray" / "pairs.txt").read_text() == (tmp_path / "single" / "pairs.txt").read_text()
    assert_same_matches(tmp_path / "ray" / "matches.h5", tmp_path / "single" / "matches.h5",
                        read_pairs(tmp_path / "single" / "pairs.txt"))
    assert_same_model(tmp_path / "ray" / "sparse" / "0", tmp_path / "single" / "sparse" / "0")
    assert pycolmap.Reconstruction(tmp_path / "ray" / "sparse" / "0").num_reg_images() == 8


def test_localize_on_ray_gives_the_single_process_poses(small_courtyard, weights_path, tmp_path):
    truth = pycolmap.Reconstruction(small_courtyard / "ground_truth")
    images = posed_images_from_model(truth, small_courtyard / "images")
    database, queries = as_aachen(images, ["view_03.png", "view_06.png"])
    dataset = write_mini_aachen(tmp_path / "aachen", database, queries)

    def localize(output, *extra):
        return [sys.executable, "-m", "d2sfm.localize", "aachen", "--dataset", str(dataset), "--output", str(output),
                "--weights", str(weights_path), "--single-scale", "--quiet", *extra]

    single, clustered = run_side_by_side(localize(tmp_path / "single"),
                                         localize(tmp_path / "ray", "--ray", "--ray-workers", "2"))
    assert single.returncode == 0, single.stderr
    assert clustered.returncode == 0, clustered.stderr
    assert_same_features(tmp_path / "ray" / "features.h5", tmp_path / "single" / "features.h5")
    submission = "Aachen_eval_[d2sfm].txt"
    ours, theirs = (read_poses(tmp_path / run / submission) for run in ("ray", "single"))
    assert sorted(ours) == sorted(theirs) and len(ours) == 2
    for name in ours:
        # Equal features and matches; COLMAP's randomised verification and triangulation still move the poses a
        # little (0.04 in translation seen), so they must agree at the benchmark's finest threshold, 0.25 m, 2 deg.
        position, rotation = pose_errors(theirs[name], ours[name])
        assert position < 0.25 and rotation < 2.0, (name, position, rotation)
    for run in ("ray", "single"):
        scores = json.loads((tmp_path / run / "summary.json").read_text())["scores"]
        assert scores["recall_percent"] and all(r == 100.0 for r in scores["recall_percent"]), (run, scores)
