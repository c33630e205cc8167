import cv2
import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2sfm.features.extractor import network_input_size, resize_for_network
from d2sfm.io.images import ImageReadError, list_images, read_image_bgr
from d2sfm.io.keypoints import colmap_xy_to_network_ij, network_ij_to_colmap_xy


def test_exif_orientation_is_ignored_like_pycolmap(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif)
    image = read_image_bgr(path)
    bitmap = pycolmap.Bitmap.read(str(path), True)
    assert (image.shape[1], image.shape[0]) == (bitmap.width, bitmap.height) == (64, 40)


def test_gray_16bit_and_rgba_become_8bit_bgr(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 255, (30, 20), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    deep = (gray.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name in ("gray.png", "deep.png", "rgba.png"):
        image = read_image_bgr(tmp_path / name)
        assert image.shape == (30, 20, 3) and image.dtype == np.uint8
        assert np.array_equal(image[:, :, 1], gray), name


def test_unreadable_and_missing_images_raise_one_clear_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg: cannot be decoded"):
        read_image_bgr(tmp_path / "broken.jpg")
    with pytest.raises(ImageReadError, match="no such image file"):
        read_image_bgr(tmp_path / "absent.jpg")


def test_list_images_is_recursive_and_relative(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "sub/a.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert list_images(tmp_path) == ["b.jpg", "sub/a.PNG"]


def test_resizing_rules_of_the_original():
    assert network_input_size(1200, 1600, 1600, 2800) == (1200, 1600)
    assert network_input_size(2000, 3000, 1600, 2800) == (1066, 1600)
    assert network_input_size(1600, 1600, 1600, 2800) == (1400, 1400)
    image = np.zeros((2000, 3000, 3), np.uint8)
    assert resize_for_network(image, 1600, 2800).shape == (1066, 1600, 3)


def test_keypoint_convention_round_trip():
    ij = np.array([[0.0, 0.0], [10.25, 3.5]])
    xy = network_ij_to_colmap_xy(ij, factor_i=2.0, factor_j=4.0)
    assert xy.tolist() == [[2.0, 1.0], [16.0, 21.5]]  # pixel (0,0) of a 2x/4x smaller image covers [0,4)x[0,2)
    assert np.allclose(colmap_xy_to_network_ij(xy, 2.0, 4.0), ij)
