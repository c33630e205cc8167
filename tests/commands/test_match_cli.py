"""``python -m d2sfm.match`` on real D2 features of three photos."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from d2sfm.io.h5 import read_features, read_matches
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
