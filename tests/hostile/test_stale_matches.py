"""Matches that no longer fit their features (issue: stale matches): ``match`` resumed without checking its settings
or its features, so a rerun with --ratio kept the old matches, and after ``extract --max-keypoints 100
--overwrite`` it kept matches0 indices up to 254 against 100 keypoints, which ``export hloc`` passed on. On three
real photos, the commands run as a user runs them."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from d2sfm.io.h5 import list_entries, read_features
from d2sfm.io.matches_h5 import pair_keys
from tests.in_process import command_in_process

from .conftest import assert_one_line_error, command

pytestmark = pytest.mark.integration


def test_other_settings_are_refused_and_re_extracted_features_are_matched_again(tmp_path, sacre_coeur_images,
                                                                                 weights_path):
    names = sorted(path.name for path in sacre_coeur_images.glob("*.jpg"))[:3]
    image_list = tmp_path / "images.txt"
    image_list.write_text("".join(f"{name}\n" for name in names))
    features, matches, pairs = tmp_path / "features.h5", tmp_path / "matches.h5", tmp_path / "pairs.txt"
    pairs.write_text(f"{names[0]} {names[1]}\n{names[1]} {names[2]}\n")

    def extract(*args):
        run = command("extract", sacre_coeur_images, "--image-list", image_list, "-o", features, "--max-edge", "256",
                      "--quiet", "--weights", weights_path, *args)
        assert run.returncode == 0, run.stderr

    def match(*args):  # in this process: the refusal below runs as python -m does
        return command_in_process("d2sfm.match", features, pairs, "-o", matches, "--quiet", "--device", "cpu", *args)

    extract()
    first = match()
    assert first.returncode == 0 and "2 pairs matched, 0 already done" in first.stdout, first.stderr
    with h5py.File(matches, "r") as handle:  # the settings are recorded, as features.h5 records its own
        assert '"ratio": null' in handle.attrs["settings"]
    before = matches.read_bytes()

    refused = command("match", features, pairs, "-o", matches, "--quiet", "--ratio", "0.8")
    assert_one_line_error(refused, f"{matches}: holds matches made with other settings", "ratio: None there, 0.8 now",
                          "--overwrite", "another output file")
    assert matches.read_bytes() == before

    stale = tmp_path / "stale.h5"
    shutil.copy(matches, stale)
    extract("--max-keypoints", "100", "--overwrite")
    assert all(len(read_features(features, name).keypoints) == 100 for name in list_entries(features))
    again = match()
    assert again.returncode == 0 and "2 pairs matched, 0 already done" in again.stdout, again.stderr
    assert "2 pair(s) are matched again: features of their images were extracted again" in again.stdout
    with h5py.File(matches, "r") as handle:
        for key in pair_keys(handle):
            matches0 = handle[key]["matches0"][()]
            assert len(matches0) == 100 and matches0.max() < 100 and np.count_nonzero(matches0 >= 0) > 5
    assert "0 pairs matched, 2 already done" in match().stdout

    exported = command_in_process("d2sfm.export", "hloc", features, matches, "-o", tmp_path / "hloc", "--quiet")
    assert exported.returncode == 0, exported.stderr
    refused = command_in_process("d2sfm.export", "hloc", features, stale, "-o", tmp_path / "from-stale", "--quiet")
    assert_one_line_error(refused, f"{stale}: pair {names[0]} {names[1]} was matched from other features",
                          "python -m d2sfm.match")
    assert not (tmp_path / "from-stale" / "features.h5").exists()
