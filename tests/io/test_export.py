"""hloc interoperability: d2sfm.export writes hloc's exact conventions, and d2sfm reads hloc's files as they are."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from d2sfm.errors import D2sfmError
from d2sfm.io.features import Features
from d2sfm.io.h5 import FeatureWriter, read_features, read_keypoints
from d2sfm.io.matches_h5 import MatchWriter, read_matches

NAMES = ("street/a.jpg", "b.jpg")


def _features(count: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    descriptors = rng.normal(size=(count, 512)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    keypoints = rng.uniform(0, 300, (count, 2)).astype(np.float32)
    keypoints[0] = (10.5, 20.5)  # the centre of pixel (10, 20) in COLMAP's convention
    keypoints[1] = (0.0, 0.0)  # the top-left corner of the image
    return Features(keypoints, np.ones(count, np.float32), rng.random(count).astype(np.float32), descriptors,
                    (320, 240), rng.normal(size=512).astype(np.float32))


@pytest.fixture
def d2sfm_files(tmp_path):
    features = tmp_path / "features.h5"
    writer = FeatureWriter(features, {"test": True})
    for index, name in enumerate(NAMES):
        writer.write(name, _features(200 + 50 * index, index))
    matches = tmp_path / "matches.h5"
    matches0 = np.full(200, -1)
    matches0[[0, 5, 7]] = [3, 40, 249]
    MatchWriter(matches).write_many([(*NAMES, matches0, np.linspace(0, 1, 200))])
    return features, matches


def _export(features, matches, output):
    return subprocess.run([sys.executable, "-m", "d2sfm.export", "hloc", str(features), str(matches), "-o",
                           str(output), "--quiet"], capture_output=True, text=True)


def test_export_writes_hlocs_conventions(d2sfm_files, tmp_path):
    features, matches = d2sfm_files
    run = _export(features, matches, tmp_path / "hloc")
    assert run.returncode == 0, run.stderr
    with h5py.File(tmp_path / "hloc" / "features.h5", "r") as handle:
        group = handle["street"]["a.jpg"]  # slashes in names make nested groups, as in hloc
        assert sorted(group) == ["descriptors", "image_size", "keypoints", "scores"]
        assert np.allclose(group["keypoints"][0], (10.0, 20.0)) and np.allclose(group["keypoints"][1], (-0.5, -0.5))
        assert group["descriptors"].shape == (512, 200)  # D x N
        assert np.array_equal(group["image_size"][()], (320, 240))  # width, height
        original = read_features(features, NAMES[0])
        assert np.array_equal(group["descriptors"][()], original.descriptors.T)
    with h5py.File(tmp_path / "hloc" / "global-feats.h5", "r") as handle:
        assert handle["b.jpg"]["global_descriptor"].shape == (512,)
    with h5py.File(tmp_path / "hloc" / "matches.h5", "r") as handle:
        pair = handle["street-a.jpg"]["b.jpg"]  # hloc's names_to_pair: '/' inside a name becomes '-'
        assert pair["matches0"].dtype == np.int16 and pair["matching_scores0"].dtype == np.float16
        assert list(np.flatnonzero(pair["matches0"][()] >= 0)) == [0, 5, 7]
        assert list(pair["matches0"][[0, 5, 7]]) == [3, 40, 249]


def test_the_python_api_exports_as_the_command_does(d2sfm_files, tmp_path):
    import d2sfm

    features, matches = d2sfm_files
    done = d2sfm.export_hloc(features, tmp_path / "api", matches=matches, progress=False)
    assert (done.images, done.pairs) == (2, 1) and done.global_features == tmp_path / "api" / "global-feats.h5"
    assert _export(features, matches, tmp_path / "command").returncode == 0
    for name in ("features.h5", "matches.h5", "global-feats.h5"):
        with h5py.File(tmp_path / "api" / name, "r") as a, h5py.File(tmp_path / "command" / name, "r") as b:
            def datasets(handle):
                found = {}
                handle.visititems(lambda key, item: found.update({key: item[()]}) if isinstance(item, h5py.Dataset)
                                  else None)
                return found
            ours, theirs = datasets(a), datasets(b)
            assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_large_indices_do_not_wrap(tmp_path):
    """hloc writes matches0 as int16, which wraps above 32,767 keypoints; the export widens where it must."""
    features = tmp_path / "features.h5"
    writer = FeatureWriter(features, {"test": True})
    for index, name in enumerate(NAMES):
        writer.write(name, _features(40_000, index))
    matches0 = np.full(40_000, -1)
    matches0[39_999] = 39_000
    MatchWriter(tmp_path / "matches.h5").write_many([(*NAMES, matches0, np.ones(40_000))])
    assert _export(features, tmp_path / "matches.h5", tmp_path / "hloc").returncode == 0
    with h5py.File(tmp_path / "hloc" / "matches.h5", "r") as handle:
        stored = handle["street-a.jpg"]["b.jpg"]["matches0"]
        assert stored.dtype == np.int32 and stored[39_999] == 39_000


def test_hloc_files_read_as_d2sfms(d2sfm_files, tmp_path):
    """Every reader takes an hloc file (keypoints shifted back by 0.5 px, descriptors transposed), matching on it
    gives the same matches, and d2sfm never appends its own convention to it."""
    features, matches = d2sfm_files
    assert _export(features, matches, tmp_path / "hloc").returncode == 0
    hloc_features = tmp_path / "hloc" / "features.h5"
    for name in NAMES:
        ours, theirs = read_features(features, name), read_features(hloc_features, name)
        assert np.allclose(ours.keypoints, theirs.keypoints, atol=1e-5)
        assert np.array_equal(ours.descriptors, theirs.descriptors) and ours.image_size == theirs.image_size
        assert np.allclose(read_keypoints(hloc_features, name)[0], ours.keypoints, atol=1e-5)
    assert np.array_equal(read_matches(tmp_path / "hloc" / "matches.h5", *NAMES)[0], read_matches(matches, *NAMES)[0])

    pairs = tmp_path / "pairs.txt"
    pairs.write_text(" ".join(NAMES) + "\n")
    for source, output in ((features, tmp_path / "ours.h5"), (hloc_features, tmp_path / "theirs.h5")):
        run = subprocess.run([sys.executable, "-m", "d2sfm.match", str(source), str(pairs), "-o", str(output),
                              "--quiet", "--device", "cpu"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    ours, theirs = read_matches(tmp_path / "ours.h5", *NAMES)[0], read_matches(tmp_path / "theirs.h5", *NAMES)[0]
    assert len(ours) > 0 and np.array_equal(ours, theirs)

    with pytest.raises(D2sfmError, match="hloc's conventions"):
        FeatureWriter(hloc_features, {"test": True})
    again = subprocess.run([sys.executable, "-m", "d2sfm.export", "hloc", str(hloc_features), "-o",
                            str(tmp_path / "again")], capture_output=True, text=True)
    assert again.returncode == 2 and "already in hloc's conventions" in again.stderr


def test_matches_that_do_not_fit_the_features_are_refused_before_anything_is_written(d2sfm_files, tmp_path):
    """export hloc passed on matches whose indices point past the features' keypoints (matches made before the
    features were extracted again): hloc would have read them as correspondences."""
    from tests.in_process import command_in_process

    features, _ = d2sfm_files
    output = tmp_path / "hloc"
    beyond = tmp_path / "beyond.h5"  # no record of its features (an earlier d2sfm's): its indices are checked
    matches0 = np.full(200, -1)
    matches0[3] = 250  # b.jpg has 250 keypoints: 0..249
    MatchWriter(beyond).write_many([(*NAMES, matches0, np.ones(200))])
    run = command_in_process("d2sfm.export", "hloc", features, beyond, "-o", output, "--quiet")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"error: {beyond}: pair street/a.jpg b.jpg matches keypoint 250 of b.jpg, which has 250" in run.stderr
    assert "python -m d2sfm.match" in run.stderr and "--overwrite" in run.stderr
    assert not output.exists() or not any(output.iterdir())

    short = tmp_path / "short.h5"  # one matches0 entry per keypoint of the first image, or other features
    MatchWriter(short).write_many([(*NAMES, np.full(150, -1), np.ones(150))])
    run = command_in_process("d2sfm.export", "hloc", features, short, "-o", output, "--quiet")
    assert run.returncode == 2 and "pair street/a.jpg b.jpg has 150 matches0 entries but" in run.stderr


def test_matches_made_from_features_extracted_since_are_refused(d2sfm_files, tmp_path):
    """Recorded identities catch what the counts cannot: an image extracted again with as many keypoints."""
    from d2sfm.io.h5 import feature_identities
    from tests.in_process import command_in_process

    features, _ = d2sfm_files
    output = tmp_path / "hloc"
    recorded = tmp_path / "recorded.h5"  # as d2sfm.match writes them: with the features they were made from
    MatchWriter(recorded).write_many([(*NAMES, np.full(200, -1), np.ones(200))], feature_identities(features, NAMES))
    assert command_in_process("d2sfm.export", "hloc", features, recorded, "-o", output, "--quiet").returncode == 0
    writer = FeatureWriter(features, {"test": True})
    writer.write(NAMES[1], _features(250, 5))  # b.jpg extracted again: as many keypoints, other ones
    run = command_in_process("d2sfm.export", "hloc", features, recorded, "-o", tmp_path / "again", "--quiet")
    assert run.returncode == 2 and "pair street/a.jpg b.jpg was matched from other features than" in run.stderr
    assert not (tmp_path / "again" / "features.h5").exists()
