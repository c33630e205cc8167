"""A finished scene whose files were damaged or mixed up, rerun: one line naming the file and the fix, nothing good
deleted (cases 1, 2 and the garbage stats.json of case 8 of issue 34)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import h5py

from d2sfm.io.matches_h5 import pair_key
from d2sfm.matching.pairs import read_pairs

from .conftest import assert_one_line_error, command, leftovers, reconstruct, snapshot


def test_matches_beyond_the_keypoints_are_refused_before_colmap_sees_them(scene, weights_path):
    """COLMAP's two-view geometry segfaulted (exit 139) on such indices, and every rerun again."""
    name0, name1 = read_pairs(scene / "pairs.txt")[0]
    with h5py.File(scene / "matches.h5", "r+") as handle:
        handle[pair_key(name0, name1)]["matches0"][:5] = 10**6
    (scene / "database.db").unlink()  # the database is built again from the features and these matches
    before = snapshot(scene)
    for _ in range(2):  # and a rerun says the same
        run = reconstruct(scene, weights=weights_path)
        assert_one_line_error(run, "matches.h5", f"{name0} {name1}", "keypoint 1000000", "delete matches.h5")
        assert snapshot(scene) == before and leftovers(scene) == []


def test_other_features_are_matched_again_not_read_through_the_old_matches(scene, tmp_path, weights_path):
    """A rerun with --features from another extraction used to reuse matches.h5 (an IndexError in refinement)."""
    other = tmp_path / "other.h5"
    extracted = command("extract", scene / "images", "-o", other, "--max-keypoints", "300", "--conv", "winograd",
                        "--quiet", "--weights", weights_path, in_process=True)
    assert extracted.returncode == 0, extracted.stderr
    run = reconstruct(scene, "--features", other, weights=weights_path)
    assert run.returncode == 0, run.stderr
    assert f"[extract] features read from {other}, skipped" in run.stdout
    assert "settings changed since the last run (match: features" in run.stdout and "[match]\n" in run.stdout
    recorded = json.loads((scene / "stats.json").read_text())["stage_settings"]["match"]
    assert recorded["features"] == str(other.resolve())
    assert leftovers(scene) == []


def test_a_damaged_database_beside_a_finished_model_is_refused_and_nothing_is_deleted(scene, weights_path):
    """A 0-byte or foreign database used to reach the refinement, which deleted sparse/ and then failed."""
    for damage in ("empty", "foreign"):
        (scene / "database.db").unlink()
        if damage == "empty":
            (scene / "database.db").write_bytes(b"")
        else:
            with sqlite3.connect(scene / "database.db") as connection:
                connection.execute("CREATE TABLE photos (name TEXT)")
        before = snapshot(scene)
        run = reconstruct(scene, weights=weights_path)
        assert_one_line_error(run, "database.db", "sparse", "delete database.db", "--overwrite")
        assert snapshot(scene) == before and leftovers(scene) == []


def test_a_damaged_database_without_a_model_is_built_again(scene, weights_path):
    shutil.rmtree(scene / "sparse")
    (scene / "database.db").write_bytes(b"")
    run = reconstruct(scene, weights=weights_path, in_process=True)
    assert run.returncode == 0, run.stderr
    assert "database.db: an empty file; building it again" in run.stdout and (scene / "sparse" / "0").is_dir()
    assert leftovers(scene) == []


def test_refine_refuses_an_empty_database_and_leaves_it_empty(tmp_path):
    database = tmp_path / "database.db"
    database.write_bytes(b"")
    run = command("refine", database, "--images", tmp_path)
    assert_one_line_error(run, str(database))
    assert database.read_bytes() == b""


def test_a_garbage_stats_json_is_one_line_and_changes_nothing(scene, weights_path):
    (scene / "stats.json").write_text("{garbage")
    before = snapshot(scene)
    run = reconstruct(scene, weights=weights_path)
    assert_one_line_error(run, "stats.json", "damaged", "delete it")
    assert snapshot(scene) == before
