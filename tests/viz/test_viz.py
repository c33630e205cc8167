import cv2
import numpy as np
import pytest

from d2sfm.viz.drawing import draw_keypoints, draw_matches, write_png


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


def test_model_picture_shows_points_cameras_and_graph(tmp_path):
    """The synthetic courtyard's true model, points painted magenta: the 3D view holds them and the red frusta,
    viewed down the cameras' mean viewing direction; the graph joins exactly the images that share points."""
    import subprocess
    import sys

    from d2sfm.synthetic.scene import camera_poses, courtyard, true_model
    from d2sfm.viz.model_picture import covisibility, model_arrays, model_picture, viewing_frame

    model = true_model(courtyard(0), camera_poses(5), 320, 240, 256.0, point_step=8)
    for point in model.points3D.values():
        point.color = np.array([255, 0, 255], np.uint8)
    arrays = model_arrays(model)
    frame = viewing_frame(arrays.rotations)
    assert np.allclose(frame @ frame.T, np.eye(3), atol=1e-9)
    mean_forward = arrays.rotations[:, 2, :].mean(0)
    assert np.degrees(np.arccos(frame[2] @ mean_forward / np.linalg.norm(mean_forward))) == pytest.approx(15, abs=1)

    picture = model_picture(model)
    view = picture[60:, : round(750 * 4 / 3)]
    magenta = (view[..., 2] > 200) & (view[..., 0] > 200) & (view[..., 1] < 60)
    red = (view[..., 2] > 150) & (view[..., 1] < 80) & (view[..., 0] < 80)
    assert magenta.sum() > 1000 and red.sum() > 100

    shared = covisibility(model)
    expected = {}
    for point in model.points3D.values():
        seen = sorted({model.images[element.image_id].name for element in point.track.elements})
        for index, first in enumerate(seen):
            for second in seen[index + 1:]:
                expected[(first, second)] = expected.get((first, second), 0) + 1
    assert shared == expected and len(shared) > 3

    folder = tmp_path / "sparse" / "0"
    folder.mkdir(parents=True)
    model.write(folder)
    run = subprocess.run([sys.executable, "-m", "d2sfm.viz", "model", str(folder), "-o", str(tmp_path / "m.png")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert cv2.imread(str(tmp_path / "m.png")).shape == picture.shape
    bad = subprocess.run([sys.executable, "-m", "d2sfm.viz", "model", str(tmp_path), "-o", str(tmp_path / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a COLMAP model" in bad.stderr and "Traceback" not in bad.stderr
