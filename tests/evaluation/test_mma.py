"""The MMA protocol, homographies and the synthesised sequences on tiny inputs."""

from __future__ import annotations

import filecmp

import cv2
import numpy as np
import pytest

from d2sfm.errors import D2sfmError
from d2sfm.evaluation.mma import PairResult, accuracy_at, match_errors, summarise
from d2sfm.features.sift import root_sift, sift_features
from d2sfm.synthetic.homographies import random_homography, visible_fraction, warp_image, warp_points
from pipelines.hpatches import find_sequences, parse_methods
from pipelines.synthetic_sequences import synthesise_sequences

SCALE_AND_SHIFT = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, -4.0], [0.0, 0.0, 1.0]])


def test_errors_use_the_opencv_convention_of_the_homography():
    # COLMAP (x, y) = OpenCV + 0.5; under x' = 2x + 10 the COLMAP point 10.5 (OpenCV 10) maps to OpenCV 30,
    # COLMAP 30.5: applying H to COLMAP coordinates directly would land on 31, half a pixel times (2 - 1) off.
    keypoints0 = np.array([[10.5, 20.5], [0.5, 0.5]])
    keypoints1 = np.array([[30.5, 36.5], [10.5, -3.5]])
    errors = match_errors(keypoints0, keypoints1, np.array([[0, 0], [1, 1]]), SCALE_AND_SHIFT)
    np.testing.assert_allclose(errors, [0.0, 0.0], atol=1e-12)


def test_accuracy_counts_matches_within_each_threshold():
    keypoints0 = np.array([[10.5, 20.5], [40.5, 20.5], [10.5, 60.5]])
    moved = warp_points(SCALE_AND_SHIFT, keypoints0 - 0.5) + 0.5 + np.array([[0.5, 0], [0, 2.5], [6.0, 8.0]])
    errors = match_errors(keypoints0, moved, np.array([[0, 0], [1, 1], [2, 2]]), SCALE_AND_SHIFT)
    np.testing.assert_allclose(errors, [0.5, 2.5, 10.0])
    np.testing.assert_allclose(accuracy_at(errors, [1, 2, 3, 10]), [1 / 3, 1 / 3, 2 / 3, 1.0])
    assert accuracy_at(np.zeros(0), [1, 2]).tolist() == [0.0, 0.0]  # no matches: 0, as the paper's notebook


def test_summary_means_over_pairs_and_splits():
    pairs = [PairResult("i_a", 2, (10, 12), 4, [0.5, 1.0]), PairResult("v_b", 2, (8, 6), 2, [0.0, 0.5]),
             PairResult("v_b", 3, (8, 4), 0, [0.0, 0.0])]
    counts = {"i_a/1.ppm": 10, "i_a/2.ppm": 12, "v_b/1.ppm": 8, "v_b/2.ppm": 6, "v_b/3.ppm": 4}
    summary = summarise(pairs, counts, [1, 2])
    assert list(summary)[:4] == ["thresholds", "overall", "illumination", "viewpoint"]
    np.testing.assert_allclose(summary["overall"]["mma"], [0.5 / 3, 1.5 / 3])
    np.testing.assert_allclose(summary["viewpoint"]["mma"], [0.0, 0.25])
    assert summary["illumination"]["features_per_image"] == 11
    assert summary["viewpoint"]["matches_per_pair"] == 1
    assert summary["overall"]["pairs"] == 3 and summary["overall"]["sequences"] == 2


def _dots(height: int, width: int, points: np.ndarray) -> np.ndarray:
    image = np.zeros((height, width), np.float32)
    for x, y in points:
        cv2.circle(image, (int(x), int(y)), 0, 255.0, -1)
    return cv2.GaussianBlur(image, (0, 0), 1.5)


def test_warped_image_agrees_with_warped_points():
    """A blob at a known pixel lands where warp_points says, to a fraction of a pixel."""
    rng = np.random.default_rng(3)
    points = np.array([[40.0, 30.0], [120.0, 50.0], [80.0, 100.0], [150.0, 110.0]])
    image = _dots(140, 200, points)
    for _ in range(5):
        homography = random_homography(rng, 200, 140, strength=0.6)
        warped = warp_image(image, homography)
        for expected in warp_points(homography, points):
            x, y = np.round(expected).astype(int)
            if not (6 <= x < 194 and 6 <= y < 134):
                continue
            window = warped[y - 5:y + 6, x - 5:x + 6]
            ys, xs = np.mgrid[-5:6, -5:6]
            centroid = np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum() + [x, y]
            assert np.linalg.norm(centroid - expected) < 0.3


def test_homography_strength_zero_is_identity_and_keeps_the_image_visible():
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(random_homography(rng, 64, 48, strength=0.0), np.eye(3), atol=1e-9)
    assert visible_fraction(np.eye(3), 64, 48) == 1.0


def test_sift_keypoints_are_in_colmap_convention_and_rootsift_has_unit_norm():
    image = np.full((96, 128), 40, np.float32)
    cv2.circle(image, (60, 40), 6, 230, -1)
    image = cv2.cvtColor(cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    features = sift_features(image)
    assert len(features.keypoints) >= 1 and features.image_size == (128, 96)
    nearest = features.keypoints[np.argmin(np.linalg.norm(features.keypoints - [60.5, 40.5], axis=1))]
    assert np.linalg.norm(nearest - [60.5, 40.5]) < 0.5  # OpenCV pixel (60, 40) is COLMAP (60.5, 40.5)
    descriptors = np.abs(np.random.default_rng(0).normal(size=(5, 128))).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(root_sift(descriptors), axis=1), 1.0, atol=1e-5)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.jpg"):
        texture = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (160, 120),
                             interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / name), texture)
    return folder


def test_synthesis_is_deterministic_resumable_and_refuses_mixing(photos, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    names = synthesise_sequences(photos, first, seed=5, max_edge=100, progress=False)
    assert sorted(names) == ["i_a", "i_b", "n_a", "n_b", "v_a", "v_b"]
    synthesise_sequences(photos, second, seed=5, max_edge=100, progress=False)
    assert not filecmp.dircmp(first / "v_b", second / "v_b").diff_files
    for k in range(2, 7):
        assert (cv2.imread(str(first / "v_b" / f"{k}.png")) == cv2.imread(str(second / "v_b" / f"{k}.png"))).all()
    np.testing.assert_array_equal(np.loadtxt(first / "i_a" / "H_1_4"), np.eye(3))
    assert cv2.imread(str(first / "v_a" / "1.png")).shape[:2] == (75, 100)
    kept = (first / "v_a" / "3.png").stat().st_mtime_ns
    for path in (first / "n_b").iterdir():
        path.unlink()
    (first / "n_b").rmdir()
    synthesise_sequences(photos, first, seed=5, max_edge=100, progress=False)
    assert (first / "v_a" / "3.png").stat().st_mtime_ns == kept
    assert (cv2.imread(str(first / "n_b" / "6.png")) == cv2.imread(str(second / "n_b" / "6.png"))).all()
    third = tmp_path / "third"
    synthesise_sequences(photos, third, seed=6, max_edge=100, progress=False)
    assert not np.array_equal(np.loadtxt(third / "v_a" / "H_1_2"), np.loadtxt(first / "v_a" / "H_1_2"))
    with pytest.raises(D2sfmError, match="seed"):
        synthesise_sequences(photos, first, seed=6, max_edge=100, progress=False)


def _sequence(root, name, size=(64, 48)):
    folder = root / name
    folder.mkdir(parents=True)
    for k in range(1, 7):
        cv2.imwrite(str(folder / f"{k}.ppm"), np.zeros((size[1], size[0], 3), np.uint8))
        if k > 1:
            np.savetxt(folder / f"H_1_{k}", np.eye(3))


def test_dataset_exclusions_and_errors(tmp_path):
    root = tmp_path / "hpatches" / "hpatches-sequences-release"
    _sequence(root, "i_small")
    _sequence(root, "v_large", size=(1700, 1100))
    _sequence(root, "i_dc")  # one of the paper's exclusions, whatever its size
    found_root, kept, excluded = find_sequences(tmp_path / "hpatches")
    assert found_root == root and [s.name for s in kept] == ["i_small"] and sorted(excluded) == ["i_dc", "v_large"]
    assert kept[0].images[0] == "i_small/1.ppm" and set(kept[0].homographies) == {2, 3, 4, 5, 6}
    assert len(find_sequences(root, max_size=None, excluded=())[1]) == 3
    (root / "i_small" / "H_1_3").write_text("1 0\n0 1\n")
    with pytest.raises(D2sfmError, match=r"H_1_3: not a 3 x 3 homography"):
        find_sequences(root)
    (root / "i_small" / "H_1_3").unlink()
    with pytest.raises(D2sfmError, match=r"H_1_3: missing"):
        find_sequences(root)
    with pytest.raises(D2sfmError, match="datasets/hpatches.md"):
        find_sequences(tmp_path / "nowhere")


def test_methods_with_several_weights_are_labelled(weights_path):
    methods = parse_methods(["d2-ms", "sift"], [f"start={weights_path}", f"tuned={weights_path}"])
    assert [m.label for m in methods] == ["d2sfm MS [start]", "d2sfm MS [tuned]", "SIFT"]
    assert [m.label for m in parse_methods(["d2-ss"], [str(weights_path)])] == ["d2sfm SS"]
    with pytest.raises(D2sfmError, match="unknown methods"):
        parse_methods(["surf"], [])
