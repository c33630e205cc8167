"""Training: soft detection and the loss against direct implementations of the paper's equations, ground-truth
correspondences against known geometry, and the training command and library (loss falls, checkpoints, exact
resume also from inside an epoch, reruns with other options refused)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from d2sfm.errors import D2sfmError
from d2sfm.features.checkpoint import load_model, read_checkpoint
from d2sfm.io.keypoints import feature_map_to_image_ij, image_to_feature_map_ij
from d2sfm.synthetic.homographies import warp_points
from d2sfm.synthetic.scene import camera_poses, courtyard, render_xyz
from d2sfm.training.correspondences import depth_correspondences, homography_correspondences
from d2sfm.training.data import HomographyPairs, MegaDepthPairs
from d2sfm.training.loss import grid_positions, pair_loss
from d2sfm.training.soft_detection import soft_detection_scores
from d2sfm.training.trainer import MIN_CROP, TrainingConfig, train
from pipelines.mini_megadepth import write_mini_megadepth
from tests.in_process import command_in_process


def naive_soft_detection(features: np.ndarray) -> np.ndarray:
    """Paper eq. 4-7 cell by cell (C, H, W) -> (H, W), exponentials normalised by the image maximum."""
    relu = np.maximum(features, 0)
    channels, height, width = relu.shape
    exponentials = np.exp(relu / relu.max())
    scores = np.zeros((height, width))
    for i, j in itertools.product(range(height), range(width)):
        best = 0.0
        for c in range(channels):
            window = [exponentials[c, i + di, j + dj] if 0 <= i + di < height and 0 <= j + dj < width else 1.0
                      for di in (-1, 0, 1) for dj in (-1, 0, 1)]
            alpha = exponentials[c, i, j] / sum(window)
            beta = relu[c, i, j] / relu[:, i, j].max() if relu[:, i, j].max() > 0 else 0.0
            best = max(best, alpha * beta)
        scores[i, j] = best
    return scores / scores.sum()


def test_soft_detection_follows_the_equations():
    features = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    features[1, :, 2, 3] = -1.0  # a cell with no positive channel: score 0, not NaN
    scores = soft_detection_scores(features)
    for b in range(2):
        np.testing.assert_allclose(scores[b].numpy(), naive_soft_detection(features[b].numpy()), rtol=1e-10)
    assert scores[1, 2, 3] == 0 and torch.isfinite(scores).all()
    features.requires_grad_(True)
    soft_detection_scores(features)[0, 1, 1].backward()
    assert features.grad.abs().sum() > 0


def naive_pair_loss(f1, s1, f2, s2, cells1, cells2, margin=1.0, radius=4):
    """The extended triplet margin ranking loss, correspondence by correspondence."""
    d1 = f1 / np.linalg.norm(f1, axis=0, keepdims=True)
    d2 = f2 / np.linalg.norm(f2, axis=0, keepdims=True)
    numerator = denominator = 0.0
    for (a_i, a_j), (b_i, b_j) in zip(cells1, cells2):
        da, db = d1[:, a_i, a_j], d2[:, b_i, b_j]
        positive = np.sum((da - db) ** 2)
        negatives = [np.sum((da - d2[:, i, j]) ** 2) for i, j in np.ndindex(*f2.shape[1:])
                     if max(abs(i - b_i), abs(j - b_j)) > radius]
        negatives += [np.sum((db - d1[:, i, j]) ** 2) for i, j in np.ndindex(*f1.shape[1:])
                      if max(abs(i - a_i), abs(j - a_j)) > radius]
        weight = s1[a_i, a_j] * s2[b_i, b_j]
        numerator += weight * max(0.0, margin + positive - min(negatives))
        denominator += weight
    return numerator / denominator


def test_loss_follows_the_equations():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(8, 9, 11)), rng.normal(size=(8, 10, 12))
    s1, s2 = rng.random((9, 11)), rng.random((10, 12))
    cells1 = [(int(rng.integers(9)), int(rng.integers(11))) for _ in range(20)]
    cells2 = [(int(rng.integers(10)), int(rng.integers(12))) for _ in range(20)]
    ids1 = torch.tensor([i * 11 + j for i, j in cells1])
    positions2 = feature_map_to_image_ij(torch.tensor(cells2, dtype=torch.float64).T, 3)  # cell centres in pixels
    positions2 = positions2 + torch.from_numpy(rng.uniform(-3.9, 3.9, positions2.shape))  # anywhere in the cell
    loss = pair_loss(torch.from_numpy(f1), torch.from_numpy(s1), torch.from_numpy(f2), torch.from_numpy(s2), ids1,
                     positions2)
    assert float(loss) == pytest.approx(naive_pair_loss(f1, s1, f2, s2, cells1, cells2), rel=1e-10)


def test_position_conventions_round_trip():
    cells = grid_positions(3, 4)
    assert cells.shape == (2, 12) and cells[:, 5].tolist() == [1.0, 1.0]
    pixels = feature_map_to_image_ij(cells, 3)
    assert pixels[:, 0].tolist() == [3.5, 3.5]  # cell 0 covers pixels 0..7, centre 3.5
    torch.testing.assert_close(image_to_feature_map_ij(pixels, 3), cells)


def _dots(size: int, points: np.ndarray) -> np.ndarray:
    image = np.zeros((size, size), np.float32)
    for x, y in points:
        cv2.circle(image, (int(x), int(y)), 0, 255.0, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    return cv2.cvtColor((image / image.max() * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def test_homography_pairs_move_known_points_where_the_correspondences_say(tmp_path):
    rng = np.random.default_rng(2)
    points = np.stack(np.meshgrid(np.arange(20, 320, 36), np.arange(20, 320, 36)), -1).reshape(-1, 2)
    points = points + rng.integers(-4, 5, points.shape)
    cv2.imwrite(str(tmp_path / "dots.png"), _dots(320, points))
    pairs = HomographyPairs(tmp_path, crop=192, strength=0.5, max_edge=320, pairs_per_epoch=3, photometric=False)
    for index in range(3):
        sample = pairs[index]
        image1, image2 = sample["image1"].numpy()[..., 0].astype(float), sample["image2"].numpy()[..., 0]
        assert pairs[index]["homography"].equal(sample["homography"])  # deterministic
        ys, xs = np.nonzero((image1 == cv2.dilate(image1, np.ones((5, 5)))) & (image1 > 100))
        found = 0
        for x, y in zip(xs, ys):
            if not (8 <= x < 184 and 8 <= y < 184):
                continue
            ids, positions2 = homography_correspondences(torch.tensor([[float(y)], [float(x)]]),
                                                         sample["homography"], 192, 192)
            if len(ids) == 0:
                continue
            i2, j2 = positions2[:, 0].tolist()
            r, c = int(round(i2)), int(round(j2))
            if not (6 <= r < 186 and 6 <= c < 186):
                continue
            window = image2[r - 5:r + 6, c - 5:c + 6].astype(float)
            window = np.clip(window - 0.2 * window.max(), 0, None)
            wy, wx = np.mgrid[-5:6, -5:6]
            centroid = np.array([(wy * window).sum(), (wx * window).sum()]) / window.sum() + [r, c]
            assert np.linalg.norm(centroid - [i2, j2]) < 0.25
            found += 1
        assert found >= 5


def test_homography_correspondences_agree_with_warp_points():
    homography = torch.tensor([[1.1, 0.05, -8.0], [-0.03, 0.95, 5.0], [1e-4, 2e-4, 1.0]], dtype=torch.float64)
    positions1 = feature_map_to_image_ij(grid_positions(32, 32).double(), 3)
    ids, positions2 = homography_correspondences(positions1, homography, 256, 256)
    expected = warp_points(homography.numpy(), positions1[[1, 0]].T.numpy()[ids.numpy()])
    np.testing.assert_allclose(positions2[[1, 0]].T.numpy(), expected, atol=1e-9)
    assert (positions2 >= 0).all() and (positions2 <= 255).all() and 0 < len(ids) < 32 * 32


@pytest.fixture(scope="module")
def mini_megadepth(tmp_path_factory):
    root = tmp_path_factory.mktemp("megadepth")
    write_mini_megadepth(root, count=4)
    return root


def test_depth_correspondences_match_the_true_projection(mini_megadepth):
    info = np.load(mini_megadepth / "scene_info" / "0000.npz", allow_pickle=True)
    poses, planes = camera_poses(4), courtyard(0)
    (r1, c1), (r2, c2) = poses[0], poses[1]
    depth1, depth2 = (torch.from_numpy(((render_xyz(planes, r, c, 320, 240, 256.0) - c) @ r.T)[..., 2])
                      for r, c in ((r1, c1), (r2, c2)))
    depth1, depth2 = (torch.nan_to_num(d, nan=0.0) for d in (depth1, depth2))
    top_left = torch.tensor([10.0, 20.0])  # a crop of image 1
    positions1 = torch.stack(torch.meshgrid(torch.arange(0.0, 200, 7), torch.arange(0.0, 280, 7), indexing="ij"))
    positions1 = positions1.reshape(2, -1).double()
    crop1 = depth1[10:230, 20:310]
    ids, positions2 = depth_correspondences(
        positions1, crop1, torch.from_numpy(info["intrinsics"][0]), torch.from_numpy(info["poses"][0]), top_left,
        depth2, torch.from_numpy(info["intrinsics"][1]), torch.from_numpy(info["poses"][1]), torch.zeros(2))
    assert len(ids) > 200
    # truth: the 3D point seen at each image-1 pixel (COLMAP centre +0.5, in the full image), projected into view 2
    rays = np.stack([(positions1[1, ids].numpy() + 20 + 0.5 - 160) / 256.0,
                     (positions1[0, ids].numpy() + 10 + 0.5 - 120) / 256.0, np.ones(len(ids))], axis=1)
    world = c1 + (rays * crop1.numpy()[np.round(positions1[0, ids].numpy()).astype(int),
                                        np.round(positions1[1, ids].numpy()).astype(int)][:, None]) @ r1
    camera2 = (world - c2) @ r2.T
    expected_ij = np.stack([camera2[:, 1] / camera2[:, 2] * 256.0 + 120 - 0.5,
                            camera2[:, 0] / camera2[:, 2] * 256.0 + 160 - 0.5])
    errors = np.linalg.norm(positions2.numpy() - expected_ij, axis=0)
    assert np.median(errors) < 0.05 and np.quantile(errors, 0.95) < 0.5, errors.max()


def test_megadepth_pairs_follow_the_sampling_rules(mini_megadepth):
    pairs = MegaDepthPairs(mini_megadepth, mini_megadepth / "scene_info", pairs_per_scene=8, crop=128, seed=3)
    info = np.load(mini_megadepth / "scene_info" / "0000.npz", allow_pickle=True)
    assert len(pairs) == 8
    for pair in pairs.pairs:
        a, b = pair["ids"]
        assert 0.5 <= info["overlap_matrix"][a, b] <= 1.0 and info["scale_ratio_matrix"][a, b] <= 1.5
    sample = pairs[0]
    assert sample["image1"].shape == (128, 128, 3) and sample["depth2"].shape == (128, 128)
    again = MegaDepthPairs(mini_megadepth, mini_megadepth / "scene_info", pairs_per_scene=8, crop=128, seed=3)
    assert [p["ids"] for p in again.pairs] == [p["ids"] for p in pairs.pairs]
    pairs.set_epoch(1)
    assert [p["centres"] for p in again.pairs] != [p["centres"] for p in pairs.pairs]  # a new draw each epoch


def train_command(*args, weights):
    env = {**os.environ, "D2SFM_WEIGHTS": str(weights)}
    return subprocess.run([sys.executable, "-m", "d2sfm.train", *map(str, args), "--quiet"], capture_output=True,
                          text=True, env=env, timeout=900)


def stopped_inside_an_epoch(output, *args, weights) -> None:
    """Run the command and SIGKILL it just after its first checkpoint inside an epoch (last.pth replaced)."""
    last = output / "checkpoints" / "last.pth"
    before = last.stat().st_ino
    process = subprocess.Popen([sys.executable, "-m", "d2sfm.train", *map(str, args), "--output", str(output),
                                "--quiet"],
                               env={**os.environ, "D2SFM_WEIGHTS": str(weights)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while last.stat().st_ino == before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, error = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, error  # killed, not finished


@pytest.mark.integration
def test_training_lowers_the_loss_and_resumes_exactly(tmp_path, sacre_coeur_images, weights_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in sacre_coeur_images.iterdir())[:3]:
        (photos / name).symlink_to(sacre_coeur_images / name)
    common = ["--data", "homography", "--images", photos, "--pairs-per-epoch", 6, "--val-pairs", 6, "--crop", 128]
    straight = train_command(*common, "--epochs", 3, "--output", tmp_path / "straight", weights=weights_path)
    assert straight.returncode == 0, straight.stderr
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert log[-1]["val_loss"] < log[0]["val_loss"]  # the loss falls on held pairs
    assert log[-1]["train_loss"] < log[1]["train_loss"] or log[-1]["val_loss"] < log[1]["val_loss"]
    first = train_command(*common, "--epochs", 1, "--output", tmp_path / "resumed", weights=weights_path)
    assert first.returncode == 0, first.stderr
    # killed inside epoch 2 (a checkpoint every step), then resumed there: a different --checkpoint-every is fine
    stopped_inside_an_epoch(tmp_path / "resumed", *common, "--epochs", 3, "--checkpoint-every", 1,
                            weights=weights_path)
    resumed = train_command(*common, "--epochs", 3, "--output", tmp_path / "resumed", weights=weights_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "epoch 2, step " in resumed.stdout
    assert "epoch 2, step 0" not in resumed.stdout  # resumed inside the epoch
    resumed_log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed_log] == [0, 1, 2, 3]
    for ours, theirs in zip(resumed_log, log):  # the resumed epoch counts the steps before the stop too
        assert ours.get("steps_with_loss") == theirs.get("steps_with_loss")
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pth")["model"]
    b = read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pth")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    start = load_model(weights_path).state_dict()
    tuned = load_model(tmp_path / "straight" / "checkpoints" / "last.pth")  # the official layout loads everywhere
    assert not torch.equal(tuned.state_dict()["dense_feature_extraction.model.21.weight"],
                           start["dense_feature_extraction.model.21.weight"])
    assert torch.equal(tuned.state_dict()["dense_feature_extraction.model.19.weight"],
                       start["dense_feature_extraction.model.19.weight"])  # only conv4_3 trains by default


@pytest.mark.integration
def test_megadepth_training_runs_and_bad_input_is_one_line(tmp_path, mini_megadepth, weights_path):
    result = train_command("--data", "megadepth", "--dataset", mini_megadepth, "--pairs-per-scene", 3, "--crop",
                           128, "--epochs", 1, "--output", tmp_path / "md", weights=weights_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "md" / "log.jsonl").read_text().splitlines()[-1])
    assert record["steps_with_loss"] >= 1 and np.isfinite(record["train_loss"])
    missing = train_command("--data", "megadepth", "--dataset", tmp_path / "nowhere", "--output", tmp_path / "x",
                            weights=weights_path)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "datasets/megadepth.md" in missing.stderr


@pytest.mark.integration
def test_the_library_trains_and_a_rerun_with_other_options_is_refused(tmp_path, sacre_coeur_images, weights_path):
    """``train(TrainingConfig)`` is the command's loop. A rerun whose options would change the result used to
    crash (another --trainable-layers: the optimiser's state did not fit) or resume silently with the old ones
    (--lr recorded as 0.5, trained with 0.001)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(p.name for p in sacre_coeur_images.iterdir())[:2]:
        (photos / name).symlink_to(sacre_coeur_images / name)
    config = TrainingConfig(data="homography", images=photos, pairs_per_epoch=2, val_pairs=2, crop=128, epochs=1,
                            output=tmp_path / "run", weights=weights_path, progress=False)
    result = train(config)
    assert result.last == tmp_path / "run" / "checkpoints" / "last.pth" and result.best is not None
    assert [r["epoch"] for r in result.log] == [0, 1] and result.log[1]["steps_with_loss"] == 2
    assert result.epochs_done == 1 and result.resumed_at is None
    common = ["--data", "homography", "--images", photos, "--pairs-per-epoch", 2, "--val-pairs", 2, "--crop", 128,
              "--epochs", 1, "--output", tmp_path / "run", "--weights", weights_path, "--quiet"]
    for options, change in [(("--trainable-layers", 2), "--trainable-layers 1 -> 2"),
                            (("--lr", 0.5, "--crop", 160), "--lr 0.001 -> 0.5, --crop 128 -> 160")]:
        # (both options given again replace the earlier ones: argparse keeps the last)
        run = command_in_process("d2sfm.train", *common, *options)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert f"trained with other options ({change})" in run.stderr and "--overwrite" in run.stderr
    assert read_checkpoint(result.last)["args"]["lr"] == 0.001
    # options that do not change the result may differ; a finished run says there is nothing left to train
    again = command_in_process("d2sfm.train", *common, "--workers", 1, "--checkpoint-every", 5)
    assert again.returncode == 0, again.stderr
    assert "nothing to train" in again.stdout and "larger --epochs" in again.stdout
    more = train(dataclasses.replace(config, epochs=2))
    assert more.resumed_at == (2, 0) and [r["epoch"] for r in more.log] == [0, 1, 2]


def test_a_crop_too_small_for_the_loss_is_refused(tmp_path):
    """A 64-pixel crop has 8 x 8 cells, fewer than the 128 correspondences a pair needs: every epoch ended
    "done" having trained nothing (steps_with_loss 0)."""
    run = command_in_process("d2sfm.train", "--data", "homography", "--images", tmp_path, "--crop", 64,
                             "--output", tmp_path / "out")
    assert run.returncode == 2 and "argument --crop" in run.stderr and f">= {MIN_CROP}" in run.stderr
    with pytest.raises(D2sfmError, match="fewer than the 128 correspondences"):
        train(TrainingConfig(data="homography", images=tmp_path, crop=64, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
