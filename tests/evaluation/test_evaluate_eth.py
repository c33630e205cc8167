"""``python -m d2sfm.evaluate eth`` on a scene in the ETH benchmark's layout (the rendered courtyard with a
match_list.txt), d2sfm single-scale beside COLMAP SIFT."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from d2sfm.matching.pairs import read_pairs, sequential_pairs, write_pairs
from d2sfm.synthetic.scene import render_scene

pytestmark = pytest.mark.integration


def evaluate_eth(*args, weights):
    env = {**os.environ, "D2SFM_WEIGHTS": str(weights)}
    return subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "eth", *map(str, args), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def eth_run(tmp_path_factory, weights_path):
    scene = tmp_path_factory.mktemp("eth") / "courtyard"
    names = render_scene(scene, count=6, width=320, height=240, focal=256.0)
    write_pairs(scene / "match_list.txt", sequential_pairs(names, 3))
    output = scene.parent / "out"
    result = evaluate_eth("--dataset", scene, "--output", output, "--methods", "d2-ss", "sift", weights=weights_path)
    assert result.returncode == 0, result.stderr
    return scene, output, result


def test_statistics_of_both_pipelines(eth_run):
    scene, output, result = eth_run
    report = json.loads((output / "eth.json").read_text())
    assert report["images"] == 6 and report["pairs"].endswith("match_list.txt")
    for label in ("d2sfm SS", "COLMAP SIFT"):
        row = report["largest_model"][label]
        assert row["registered_images"] >= 5, label
        assert row["observations"] >= 2 * row["points3D"] > 0
        assert row["mean_track_length"] == pytest.approx(row["observations"] / row["points3D"])
        assert 0 < row["mean_reprojection_error"] < 2
        assert row["dense_points"] is None  # no --dense
        assert f"| {label} | {row['registered_images']} / 6 | {row['points3D']} |" in result.stdout


def test_both_pipelines_match_only_the_listed_pairs(eth_run):
    scene, output, _ = eth_run
    listed = {frozenset(p) for p in read_pairs(scene / "match_list.txt")}
    assert len(listed) == 12  # 15 would be exhaustive
    assert {frozenset(p) for p in read_pairs(output / "d2-ss" / "pairs.txt")} == listed
    with sqlite3.connect(f"file:{output / 'sift' / 'database.db'}?mode=ro", uri=True) as db:
        matched = db.execute("SELECT COUNT(*) FROM matches WHERE rows > 0").fetchone()[0]
    assert 0 < matched <= len(listed)


def test_rerun_resumes_and_bad_layout_is_one_line(eth_run, weights_path, tmp_path):
    scene, output, first = eth_run
    again = evaluate_eth("--dataset", scene, "--output", output, "--methods", "d2-ss", "sift", weights=weights_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((output / "eth.json").read_text())["largest_model"]["COLMAP SIFT"]["seconds"] == \
        json.loads((output / "sift" / "stats.json").read_text())["seconds"]
    assert "[extract] done earlier, skipped" in again.stdout and "[mapping] done earlier, skipped" in again.stdout
    missing = evaluate_eth("--dataset", tmp_path, weights=weights_path)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "images" in missing.stderr and "datasets/eth.md" in missing.stderr
