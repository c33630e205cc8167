"""``python -m d2sfm.match`` on real D2 features of three photos."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from d2sfm.io.h5 import read_features
from d2sfm.io.matches_h5 import read_matches
from d2sfm.matching.mnn import mutual_nearest_neighbours

pytestmark = pytest.mark.integration


def test_matches_file_resume_and_unknown_names(tmp_path, sacre_coeur_images, weights_path):
    names = sorted(p.name for p in sacre_coeur_images.glob("*.jpg"))[:3]
    image_list = tmp_path / "images.txt"
    image_list.write_text("".join(f"{n}\n" for n in names))
    features = tmp_path / "features.h5"
    extract = subprocess.run([sys.executable, "-m", "d2sfm.extract", str(sacre_coeur_images), "--image-list",
                              str(image_list), "-o", str(features), "--max-edge", "320", "--quiet",
                              "--weights", str(weights_path)], capture_output=True, text=True)
    assert extract.returncode == 0, extract.stderr
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{names[0]} {names[1]}\n{names[1]} {names[2]}\n{names[2]} {names[1]}\n")
    output = tmp_path / "matches.h5"
    command = [sys.executable, "-m", "d2sfm.match", str(features), str(pairs), "-o", str(output), "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "2 pairs matched, 0 already done" in first.stdout

    for a, b in [(names[0], names[1]), (names[1], names[2])]:
        expected, _ = mutual_nearest_neighbours(
            *(torch.from_numpy(read_features(features, n).descriptors.astype(np.float32)) for n in (a, b)))
        stored, scores = read_matches(output, a, b)
        assert len(stored) > 20 and np.array_equal(stored, expected.numpy())
        assert (scores > 0).all()
        reverse, _ = read_matches(output, b, a)
        assert np.array_equal(reverse, stored[:, ::-1])

    second = subprocess.run(command, capture_output=True, text=True)
    assert "0 pairs matched, 2 already done" in second.stdout

    pairs.write_text(f"{names[0]} missing.jpg\n")
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 2 and "pairs.txt:1: image 'missing.jpg' is not among the images" in bad.stderr


def test_an_empty_pair_list_and_a_features_file_as_output_are_refused_in_one_line(tmp_path):
    """``match`` wrote '0 pairs matched' for an empty pair list, and wrote its matches into features.h5 when -o
    named it."""
    from d2sfm.io.features import Features
    from d2sfm.io.h5 import FeatureWriter, list_entries
    from tests.in_process import command_in_process

    features = tmp_path / "features.h5"
    writer = FeatureWriter(features, {"test": 1})
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        writer.write(name, Features(rng.random((20, 2), dtype=np.float32), np.ones(20, np.float32),
                                    np.ones(20, np.float32), rng.random((20, 512), dtype=np.float32), (32, 32)))
    empty = tmp_path / "pairs.txt"
    empty.write_text("# nothing yet\n\na.png a.png\n")
    run = command_in_process("d2sfm.match", features, empty, "-o", tmp_path / "matches.h5", "--quiet")
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        f"error: {empty}: holds no pair to match (only blank lines, comments or an image paired with itself); "
        "list one 'name0 name1' per line"]
    assert not (tmp_path / "matches.h5").exists()

    pairs = tmp_path / "one.txt"
    pairs.write_text("a.png b.png\n")
    before = features.read_bytes()
    for extra in ((), ("--overwrite",)):
        run = command_in_process("d2sfm.match", features, pairs, "-o", features, "--quiet", *extra)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert f"error: {features}: is a d2sfm features file, not a matches file" in run.stderr
    assert features.read_bytes() == before and list_entries(features) == ["a.png", "b.png"]
