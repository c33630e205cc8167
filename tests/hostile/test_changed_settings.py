"""A finished scene rerun with other options redoes what they affect, or refuses in one line (case 7 of issue 34:
--pairs sequential, another --camera-model or a missing pair list used to exit 0 having changed nothing)."""

from __future__ import annotations

import json

from d2sfm.matching.pairs import read_pairs, sequential_pairs
from d2sfm.sfm.database import database_token
from d2sfm.sfm.mapping import read_models

from .conftest import assert_one_line_error, leftovers, reconstruct, snapshot


def test_other_pairs_are_made_matched_and_mapped(scene, weights_path):
    run = reconstruct(scene, "--pairs", "sequential", "--overlap", "2", weights=weights_path, in_process=True)
    assert run.returncode == 0, run.stderr
    assert "settings changed since the last run (pairs: pairs 'auto' -> 'sequential'" in run.stdout
    for stage in ("pairs", "database", "mapping"):
        assert f"[{stage}]\n" in run.stdout, stage
    names = sorted(path.name for path in (scene / "images").iterdir())
    assert read_pairs(scene / "pairs.txt") == sequential_pairs(names, 2)
    stats = json.loads((scene / "stats.json").read_text())
    assert stats["pairs"] == len(sequential_pairs(names, 2))
    assert stats["stage_settings"]["pairs"]["overlap"] == 2

    again = reconstruct(scene, "--pairs", "sequential", "--overlap", "2", weights=weights_path, in_process=True)
    assert again.returncode == 0 and "settings changed" not in again.stdout
    assert "[mapping] done earlier, skipped" in again.stdout
    assert leftovers(scene) == []


def test_another_camera_model_builds_the_database_and_the_model_again(scene, weights_path):
    run = reconstruct(scene, "--camera-model", "PINHOLE", weights=weights_path, in_process=True)
    assert run.returncode == 0, run.stderr
    assert "(database: camera_model 'SIMPLE_RADIAL' -> 'PINHOLE')" in run.stdout
    assert "[pairs] done earlier, skipped" in run.stdout and "[match] done earlier, skipped" in run.stdout
    model = read_models(scene / "sparse")[0]
    assert {camera.model.name for camera in model.cameras.values()} == {"PINHOLE"}


def test_other_mapper_options_map_again_from_the_same_database(scene, weights_path):
    token = database_token(scene / "database.db")
    run = reconstruct(scene, "--init-min-tri-angle", "4", weights=weights_path, in_process=True)
    assert run.returncode == 0, run.stderr
    assert "[database] done earlier, skipped" in run.stdout and "[mapping]\n" in run.stdout
    assert database_token(scene / "database.db") == token  # not built again


def test_a_missing_pair_list_is_one_line_and_changes_nothing(scene, tmp_path, weights_path):
    before = snapshot(scene)
    run = reconstruct(scene, "--pairs", tmp_path / "nonexistent.txt", weights=weights_path)
    assert_one_line_error(run, "nonexistent.txt", "no such pair list")
    assert snapshot(scene) == before
