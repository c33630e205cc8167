import cv2
import numpy as np

from d2sfm.viz import draw_keypoints, draw_matches, write_png


def test_matches_are_drawn_between_the_right_places(tmp_path):
    image0 = np.zeros((100, 200, 3), np.uint8)
    image1 = np.zeros((50, 50, 3), np.uint8)
    keypoints0 = np.array([[10.5, 20.5], [150.5, 90.5]])
    keypoints1 = np.array([[25.5, 25.5], [5.5, 5.5]])
    canvas = draw_matches(image0, image1, keypoints0, keypoints1, np.array([[0, 0], [1, 1]]),
                          inliers=np.array([True, False]), height=100)
    assert canvas.shape == (100, 200 + 8 + 100, 3)
    assert canvas[20, 10, 1] > 150 and canvas[20, 10, 2] < 50  # inlier end in image 0: green
    assert canvas[50, 208 + 50, 1] > 150  # its partner, image 1 scaled x2, centre (51, 51) -> (50, 50)
    assert canvas[90, 150, 2] > 150 and canvas[90, 150, 1] < 50  # outlier: red
    path = write_png(tmp_path / "pair.png", canvas)
    assert np.array_equal(cv2.imread(str(path)), canvas)
    assert not list(tmp_path.glob("*.part"))


def test_keypoints_are_drawn_at_their_pixel():
    image = np.zeros((64, 64, 3), np.uint8)
    drawn = draw_keypoints(image, np.array([[32.5, 10.5]]), scores=np.array([1.0]), radius=2)
    assert drawn[10, 32].any() and not drawn[40, 40].any()
