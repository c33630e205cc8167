"""--overwrite never deletes what d2sfm did not write: every input is checked before anything is deleted, a folder
that is no d2sfm output is refused in one line, and in a d2sfm folder a user's file survives (a reviewer's
thesis.txt was deleted by ``d2sfm.train --overwrite`` that then failed on a missing --images). Also: a synthetic
scene rerun with other settings no longer mixes two scenes."""

from __future__ import annotations

import json

import cv2
import pytest

from tests.in_process import command_in_process

from .conftest import FAST, assert_one_line_error, snapshot

THESIS = "four years of work\n"


def user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text(THESIS)
    return path


def test_train_overwrite_checks_its_inputs_before_deleting_anything(tmp_path):
    precious = user_folder(tmp_path / "precious")
    run = command_in_process("d2sfm.train", "--data", "homography", "--images", tmp_path / "nonexistent",
                             "--output", precious, "--overwrite", "--quiet")
    assert_one_line_error(run, "nonexistent", "no such folder")
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    assert (precious / "thesis.txt").read_text() == THESIS


def test_train_overwrite_refuses_a_folder_it_did_not_write(tmp_path, tiny_images):
    precious = user_folder(tmp_path / "precious")
    run = command_in_process("d2sfm.train", "--data", "homography", "--images", tiny_images, "--output", precious,
                             "--overwrite", "--quiet")
    assert_one_line_error(run, f"{precious}: not a d2sfm output folder (it holds thesis.txt)",
                          "choose an empty or new folder")
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    # without --overwrite, a log that is not training's own is not appended to either
    (precious / "log.jsonl").write_text("my own log\n")
    run = command_in_process("d2sfm.train", "--data", "homography", "--images", tiny_images, "--output", precious,
                             "--quiet")
    assert_one_line_error(run, "log.jsonl", "not a d2sfm training folder")
    assert (precious / "log.jsonl").read_text() == "my own log\n"


@pytest.mark.integration
def test_train_overwrite_keeps_a_user_file_in_its_own_folder(tmp_path, tiny_images, weights_path):
    output = tmp_path / "train"
    common = ["--data", "homography", "--images", tiny_images, "--pairs-per-epoch", 2, "--val-pairs", 0,
              "--crop", 128, "--epochs", 1, "--output", output, "--weights", weights_path, "--quiet"]
    assert command_in_process("d2sfm.train", *common).returncode == 0
    (output / "thesis.txt").write_text(THESIS)
    (output / "checkpoints" / "mine.pth").write_text("a user's file among the checkpoints")
    run = command_in_process("d2sfm.train", *common, "--overwrite")
    assert run.returncode == 0, run.stderr
    assert "kept what training did not write" in run.stdout and "thesis.txt" in run.stdout
    assert (output / "thesis.txt").read_text() == THESIS
    assert (output / "checkpoints" / "mine.pth").is_file() and (output / "checkpoints" / "last.pth").is_file()
    assert [json.loads(line)["epoch"] for line in (output / "log.jsonl").read_text().splitlines()] == [1]


@pytest.mark.integration
def test_reconstruct_overwrite_deletes_its_outputs_and_never_the_photos(tmp_path, tiny_images, weights_path):
    """The scene folder holds the user's images/: --overwrite deletes what reconstruct wrote, nothing else. One
    readable photo stops the run after the deletion and the extraction, which keeps the test cheap."""
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / "images" / "a.png").write_bytes((tiny_images / "view_01.png").read_bytes())
    (scene / "images" / "b.png").write_bytes(b"not a picture")
    (scene / "thesis.txt").write_text(THESIS)
    (scene / "pairs.txt").write_text("a.png b.png\n")  # an earlier run's outputs
    (scene / "stats.json").write_text("{}")
    photos = snapshot(scene / "images")
    run = command_in_process("d2sfm.reconstruct", scene, "--overwrite", "--weights", weights_path, *FAST)
    assert_one_line_error(run, "1 readable image(s) of 2")
    assert snapshot(scene / "images") == photos
    assert (scene / "thesis.txt").read_text() == THESIS
    assert not (scene / "pairs.txt").exists()  # the overwrite did run


def test_synthetic_rerun_with_other_settings_refuses_or_renders_the_scene_again_cleanly(tmp_path):
    scene = tmp_path / "syn"
    first = command_in_process("d2sfm.synthetic", scene, "--views", 4, "--width", 64, "--height", 48, "--quiet")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # --quiet: no progress bar
    before = snapshot(scene)
    other = ("--views", 2, "--width", 96, "--height", 64, "--quiet")
    refused = command_in_process("d2sfm.synthetic", scene, *other)
    assert_one_line_error(refused, "rendered with other settings", "--views 4 -> 2", "--width 64 -> 96",
                          "--overwrite")
    assert snapshot(scene) == before
    again = command_in_process("d2sfm.synthetic", scene, *other, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (scene / "images").iterdir()) == ["view_01.png", "view_02.png"]
    assert {cv2.imread(str(p)).shape for p in (scene / "images").iterdir()} == {(64, 96, 3)}
    truth = (scene / "ground_truth" / "images.txt").read_text()
    assert "view_01.png" in truth and "view_02.png" in truth and "view_03.png" not in truth
    assert json.loads((scene / "synthetic.json").read_text())["views"] == 2
    # a rerun with the same settings keeps the views and renders nothing
    same = command_in_process("d2sfm.synthetic", scene, *other)
    assert same.returncode == 0 and "2 of the 2 views rendered earlier" in same.stdout


def test_synthetic_overwrite_never_deletes_a_users_photo_or_a_reconstruction(tmp_path):
    scene = tmp_path / "syn"
    assert command_in_process("d2sfm.synthetic", scene, "--views", 2, "--width", 64, "--height", 48,
                              "--quiet").returncode == 0
    (scene / "images" / "holiday.jpg").write_bytes(b"a user's photo")
    before = snapshot(scene)
    run = command_in_process("d2sfm.synthetic", scene, "--views", 3, "--width", 64, "--height", 48, "--overwrite",
                             "--quiet")
    assert_one_line_error(run, "holiday.jpg", "choose an empty or new folder")
    assert snapshot(scene) == before
    (scene / "images" / "holiday.jpg").unlink()
    (scene / "stats.json").write_text("{}")  # a reconstruction of the old views
    run = command_in_process("d2sfm.synthetic", scene, "--views", 3, "--width", 64, "--height", 48, "--overwrite",
                             "--quiet")
    assert_one_line_error(run, "stats.json", "choose an empty or new folder")
    assert (scene / "images" / "view_02.png").is_file()


def test_synthetic_without_a_record_refuses_stale_views(tmp_path):
    """A scene an earlier release rendered (no synthetic.json) with more views than asked now."""
    scene = tmp_path / "old"
    assert command_in_process("d2sfm.synthetic", scene, "--views", 3, "--width", 64, "--height", 48,
                              "--quiet").returncode == 0
    (scene / "synthetic.json").unlink()
    run = command_in_process("d2sfm.synthetic", scene, "--views", 2, "--width", 64, "--height", 48, "--quiet")
    assert_one_line_error(run, "view_03.png", "choose an empty or new folder")


def test_synthetic_help_describes_every_option():
    run = command_in_process("d2sfm.synthetic", "--help")
    assert run.returncode == 0
    assert "--seed SEED" in run.stdout and "seeds the textures" in run.stdout
    assert "--overwrite" in run.stdout and "--quiet" in run.stdout
