"""What a new user tripped over (case 9 of issue 34): a second model of images all in the first, options without
help or without their default, and the lock that keeps two runs out of one scene."""

from __future__ import annotations

import numpy as np
import pycolmap

from d2sfm.runtime.run_lock import folder_lock
from d2sfm.sfm.mapping import drop_contained_models

from .conftest import assert_one_line_error, command, reconstruct


def _model(names: list[str]) -> pycolmap.Reconstruction:
    """A model that registers ``names`` (poses only: what drop_contained_models reads)."""
    model = pycolmap.Reconstruction()
    model.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=100, height=100,
                                                      params=[100, 50, 50], camera_id=1))
    for image_id, name in enumerate(names, start=1):
        image = pycolmap.Image(name=name, camera_id=1, image_id=image_id)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)),
                                                                   np.array([image_id, 0.0, 0.0])))
    return model


def test_a_model_of_images_all_in_a_larger_one_is_left_out():
    larger, inside, other = _model(list("abcdefghij")), _model(list("abcd")), _model(list("jklm"))
    kept = drop_contained_models([larger, inside, other])
    assert [model.num_reg_images() for model in kept] == [10, 4]
    assert {image.name for image in kept[1].images.values()} == set("jklm")


def test_every_option_says_what_it_does_and_its_default():
    text = command("reconstruct", "--help").stdout
    for option, words in [("--camera-model", "default SIMPLE_RADIAL"), ("--mapper", "default"),
                          ("--min-similarity", "default: off"), ("--ratio", "default: off")]:
        start = text.index(f"\n  {option} ")  # its entry under options:, not the usage line
        end = text.find("\n  -", start + 1)
        assert words in " ".join(text[start:end].split()), option


def test_a_second_run_in_the_same_scene_is_refused_while_the_first_holds_it(scene, weights_path):
    with folder_lock(scene):
        run = reconstruct(scene, weights=weights_path)
    assert_one_line_error(run, str(scene), "another d2sfm run", "wait for it")
    after = reconstruct(scene, weights=weights_path)
    assert after.returncode == 0 and "[mapping] done earlier, skipped" in after.stdout
