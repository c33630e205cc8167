"""Photo names as file systems allow them (case 4 of issue 34): white space and line breaks, a quote or a '#' in
front, bytes that are not UTF-8, a folder named like features.h5's scratch group, and image lists with absolute
or ./ paths."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from d2sfm.io.h5 import list_entries
from d2sfm.matching.pairs import read_pairs
from d2sfm.sfm.mapping import read_models
from d2sfm.synthetic.scene import render_scene

from .conftest import FAST, command

AWKWARD = ["view 01.png", "new\nline 02.png", "#3.png", '"quoted" 04.png', "tab\there 05.png", "caf\u00e9 06.png",
           "dir with space/view 07.png", "view_08.png"]


def test_any_name_a_file_system_allows_is_reconstructed_or_skipped_with_its_reason(tmp_path, weights_path):
    scene = tmp_path / "names"
    render_scene(scene, count=8, width=320, height=240, focal=256.0)
    images = scene / "images"
    for old, new in zip(sorted(images.iterdir()), AWKWARD):
        (images / new).parent.mkdir(exist_ok=True)
        old.rename(images / new)
    (images / "_d2sfm_incomplete").mkdir()
    shutil.copy(images / "view_08.png", images / "_d2sfm_incomplete" / "view.png")
    shutil.copy(images / "view_08.png", os.path.join(os.fsencode(images), b"latin1-\xe9.png"))

    run = command("reconstruct", scene, "--demo", *FAST, "--weights", weights_path)
    assert run.returncode == 0, run.stderr
    assert "its name is not valid UTF-8 text; rename the file" in run.stdout
    assert "_d2sfm_incomplete is reserved" in run.stdout
    model = read_models(scene / "sparse")[0]
    assert {image.name for image in model.images.values()} == set(AWKWARD)
    assert len(model.reg_image_ids()) >= 6
    pairs = read_pairs(scene / "pairs.txt", known_names=AWKWARD)  # every name read back as written
    assert len(pairs) == 28
    stats = json.loads((scene / "stats.json").read_text())
    assert len(stats["failed_images"]) == 2

    again = command("reconstruct", scene, "--demo", *FAST, "--weights", weights_path, in_process=True)
    assert again.returncode == 0 and "[mapping] done earlier, skipped" in again.stdout


def test_an_image_list_with_absolute_and_dotted_paths_resumes_and_keeps_names_relative(tiny_images, tmp_path,
                                                                                       weights_path):
    photos = sorted(tiny_images.iterdir())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos[0]}\n{photos[1].parent}/./{photos[1].name}\n{photos[2]}\n")
    output = tmp_path / "features.h5"
    args = ("extract", listing, "-o", output, "--conv", "winograd", "--quiet", "--weights", weights_path)
    first = command(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3 images extracted, 0 already done" in first.stdout
    assert sorted(list_entries(output)) == [photo.name for photo in photos[:3]]  # relative to their folder
    second = command(*args, cwd=tmp_path)
    assert second.returncode == 0 and "0 images extracted, 3 already done" in second.stdout

    relative = tmp_path / "relative.txt"  # paths relative to the current folder keep their names, normalised
    relative.write_text(f"./{Path(os.path.relpath(photos[3], tmp_path)).as_posix()}\n")
    third = command("extract", relative, "-o", tmp_path / "other.h5", "--conv", "winograd", "--quiet", "--weights",
                    weights_path, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert list_entries(tmp_path / "other.h5") == [Path(os.path.relpath(photos[3], tmp_path)).as_posix()]
