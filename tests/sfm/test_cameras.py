"""Known intrinsics: COLMAP's parameter lists checked against the model, and the database's cameras take them."""

import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2sfm.errors import D2sfmError
from d2sfm.sfm.cameras import INTRINSICS_REFINEMENT, intrinsics_refinement, parameter_names, parse_camera_params
from d2sfm.sfm.database import create_database


def test_parameter_names_follow_colmap():
    assert parameter_names("PINHOLE") == ["fx", "fy", "cx", "cy"]
    assert parameter_names("SIMPLE_RADIAL") == ["f", "cx", "cy", "k"]
    assert len(parameter_names("OPENCV")) == 8


def test_parameters_are_parsed_and_checked():
    assert parse_camera_params("PINHOLE", "2759.48, 2764.16,1520.69,1006.81") == [2759.48, 2764.16, 1520.69, 1006.81]
    assert parse_camera_params("PINHOLE", "") == []
    with pytest.raises(D2sfmError, match=r"PINHOLE takes 4 parameters \(fx, fy, cx, cy\), 3 given"):
        parse_camera_params("PINHOLE", "1,2,3")
    with pytest.raises(D2sfmError, match="not a comma-separated list of numbers"):
        parse_camera_params("SIMPLE_RADIAL", "1,2,three,4")
    with pytest.raises(D2sfmError, match="focal length must be positive"):
        parse_camera_params("SIMPLE_PINHOLE", "-5,10,10")
    with pytest.raises(D2sfmError, match="finite"):
        parse_camera_params("SIMPLE_PINHOLE", "nan,10,10")
    with pytest.raises(D2sfmError, match="camera model 'FISHEYE9' is unknown"):
        parse_camera_params("FISHEYE9", "1")


def test_intrinsics_refinement_names():
    assert intrinsics_refinement("none") == INTRINSICS_REFINEMENT["none"]
    assert not any(vars(intrinsics_refinement("none")).values())
    assert all(vars(intrinsics_refinement("all")).values())
    colmap = pycolmap.BundleAdjustmentOptions()  # "colmap" is what COLMAP's own options default to
    assert vars(intrinsics_refinement("colmap")) == {"focal": colmap.refine_focal_length,
                                                    "principal_point": colmap.refine_principal_point,
                                                    "extra": colmap.refine_extra_params}
    with pytest.raises(D2sfmError, match="use one of colmap, none, focal, all"):
        intrinsics_refinement("some")


def test_database_cameras_take_the_known_intrinsics(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(images / name)
    ids = create_database(tmp_path / "db.db", images, ["a.png", "b.png"], camera_mode="per-image",
                          camera_model="PINHOLE", camera_params="250.5,251,161.25,119.75")
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        for image_id in ids.values():
            camera = database.read_camera(database.read_image(image_id).camera_id)
            assert camera.model.name == "PINHOLE"
            assert list(camera.params) == [250.5, 251.0, 161.25, 119.75]
            assert camera.has_prior_focal_length
    with pytest.raises(D2sfmError, match="PINHOLE takes 4 parameters"):
        create_database(tmp_path / "other.db", images, ["a.png"], camera_model="PINHOLE", camera_params="250")
    assert not (tmp_path / "other.db").exists()  # checked before anything is written
