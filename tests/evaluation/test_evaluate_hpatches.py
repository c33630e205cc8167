"""``python -m d2sfm.evaluate hpatches`` end to end on sequences synthesised from two real photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2sfm.io.h5 import list_entries, read_features

pytestmark = pytest.mark.integration


def evaluate(*args, weights, quiet=True):
    env = {**os.environ, "D2SFM_WEIGHTS": str(weights)}
    quiet_flag = ["--quiet"] if quiet else []
    return subprocess.run([sys.executable, "-m", "d2sfm.evaluate", "hpatches", *map(str, args), *quiet_flag],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def run(tmp_path_factory, sacre_coeur_images, weights_path):
    photos = tmp_path_factory.mktemp("photos")
    for name in sorted(p.name for p in sacre_coeur_images.iterdir())[:2]:
        (photos / name).symlink_to(sacre_coeur_images / name)
    output = tmp_path_factory.mktemp("hpatches_synth")
    args = ["--images", photos, "--output", output, "--synth-max-edge", 224, "--methods", "d2-ss", "sift", "rootsift"]
    result = evaluate(*args, weights=weights_path)
    assert result.returncode == 0, result.stderr
    return args, output, result


def test_table_json_and_figures(run):
    _, output, result = run
    report = json.loads((output / "hpatches.json").read_text())
    assert len(report["sequences"]) == 6 and report["excluded"] == []
    assert list(report["methods"]) == ["d2sfm SS", "SIFT", "RootSIFT"]
    assert "| d2sfm SS | viewpoint (2) |" in result.stdout and "| SIFT | night (2) |" in result.stdout
    assert (output / "mma.png").stat().st_size > 10_000 and (output / "counts.png").stat().st_size > 5_000
    for label, summary in report["methods"].items():
        for group in ("overall", "illumination", "viewpoint", "night"):
            mma = np.array(summary[group]["mma"])
            assert len(mma) == 10 and np.all(np.diff(mma) >= 0) and 0 <= mma[0] and mma[-1] <= 1
        # homographies in the right direction and convention: most matches are correct at 10 px
        assert summary["viewpoint"]["mma"][-1] > 0.5, label
        assert summary["illumination"]["mma"][-1] > 0.5, label


def test_counts_come_from_the_cached_features(run):
    _, output, _ = run
    report = json.loads((output / "hpatches.json").read_text())
    summary = report["methods"]["d2sfm SS"]
    features = summary["features_file"]
    names = list_entries(features)
    assert len(names) == 36
    counts = {n: len(read_features(features, n).keypoints) for n in names}
    assert summary["overall"]["features_per_image"] == pytest.approx(np.mean(list(counts.values())))
    for pair in summary["pairs_detail"]:
        assert pair["matches"] <= min(pair["features"])


def test_rerun_reuses_features_and_labels_several_weights(run, weights_path):
    args, output, first = run
    files = sorted((output / "features").iterdir())
    again = evaluate(*args[:-3], "d2-ss", "--weights", f"start={weights_path}", "--weights", f"again={weights_path}",
                     weights=weights_path, quiet=False)
    assert again.returncode == 0, again.stderr
    assert sorted((output / "features").iterdir()) == files
    assert "matching d2sfm SS [again]" in again.stderr and "extracting" not in again.stderr  # cached features
    report = json.loads((output / "hpatches.json").read_text())
    assert list(report["methods"]) == ["d2sfm SS [start]", "d2sfm SS [again]"]
    assert report["methods"]["d2sfm SS [start]"]["overall"] == report["methods"]["d2sfm SS [again]"]["overall"]


def test_bad_dataset_is_one_line(tmp_path, weights_path):
    result = evaluate("--dataset", tmp_path / "missing", "--output", tmp_path, weights=weights_path)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "datasets/hpatches.md" in result.stderr
