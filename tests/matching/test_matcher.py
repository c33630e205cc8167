"""matches.h5 remembers what its matches were made from: the match settings (other ones are refused, as
features.h5's are) and, per pair, the features of its two images (a pair whose images were extracted again since is
matched again on resume, the others kept). Tiny synthetic features, the real matcher on the CPU."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from d2sfm.cluster.match import MatchingWorker
from d2sfm.errors import D2sfmError
from d2sfm.io.features import Features
from d2sfm.io.h5 import FeatureWriter, list_entries, read_features
from d2sfm.io.matches_h5 import MatchWriter, read_matches
from d2sfm.matching.matcher import match_pairs
from d2sfm.pipeline.features import unmatched_pairs

NAMES = ["a.png", "b.png", "c.png"]
PAIRS = [("a.png", "b.png"), ("b.png", "c.png")]


def _features(count: int, seed: int) -> Features:
    """``count`` keypoints whose descriptors are one shared random set, permuted and a little noisy per image, so
    that mutual nearest neighbours find most of them."""
    base = np.random.default_rng(0).normal(size=(400, 64)).astype(np.float32)
    rng = np.random.default_rng(seed)
    descriptors = base[rng.permutation(400)[:count]] + 0.05 * rng.normal(size=(count, 64)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    keypoints = rng.uniform(0, 100, (count, 2)).astype(np.float32)
    return Features(keypoints, np.ones(count, np.float32), np.ones(count, np.float32), descriptors, (100, 100))


@pytest.fixture
def features(tmp_path):
    path = tmp_path / "features.h5"
    writer = FeatureWriter(path, {"test": 1}, descriptor_dtype=np.float32)
    for seed, name in enumerate(NAMES):
        writer.write(name, _features(300, seed))
    return path


def _stored(path, key):
    with h5py.File(path, "r") as handle:
        return handle[key]["matches0"][()]


def test_other_settings_are_refused_in_one_line_and_overwrite_starts_again(features, tmp_path):
    matches = tmp_path / "matches.h5"
    assert match_pairs(features, PAIRS, matches, progress=False) == 2
    before = matches.read_bytes()
    with pytest.raises(D2sfmError) as refused:
        match_pairs(features, PAIRS, matches, ratio=0.8, progress=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{matches}: holds matches made with other settings")
    assert "ratio: None there, 0.8 now" in message and "--overwrite" in message
    assert matches.read_bytes() == before  # a refused run leaves the file as it was
    assert match_pairs(features, PAIRS, matches, progress=False) == 0  # the same settings: resumed, nothing to do
    unfiltered = np.count_nonzero(_stored(matches, "a.png/b.png") >= 0)
    assert match_pairs(features, PAIRS, matches, ratio=0.8, overwrite=True, progress=False) == 2
    assert np.count_nonzero(_stored(matches, "a.png/b.png") >= 0) < unfiltered
    assert match_pairs(features, PAIRS, matches, ratio=0.8, progress=False) == 0  # the new settings are recorded


def test_pairs_of_re_extracted_images_are_matched_again_and_only_those(features, tmp_path, caplog):
    matches = tmp_path / "matches.h5"
    match_pairs(features, PAIRS, matches, progress=False)
    kept = _stored(matches, "b.png/c.png")
    FeatureWriter(features, {"test": 1}, descriptor_dtype=np.float32).write("a.png", _features(100, 7))
    assert unmatched_pairs(PAIRS, matches) == []  # present: the stage checks of earlier callers see them done
    assert unmatched_pairs(PAIRS, matches, features) == [("a.png", "b.png")]  # given the features: a is stale
    with caplog.at_level(logging.INFO, logger="d2sfm"):
        assert match_pairs(features, PAIRS, matches, progress=False) == 1
    assert "1 pair(s) are matched again: features of their images were extracted again" in caplog.text
    matches0 = _stored(matches, "a.png/b.png")
    assert len(matches0) == 100 and matches0.max() < 300 and np.count_nonzero(matches0 >= 0) > 10
    assert np.array_equal(_stored(matches, "b.png/c.png"), kept)
    pairs, _ = read_matches(matches, "b.png", "a.png")  # the reverse order reads the same identities
    assert pairs[:, 1].max() < 100

    # the same features written again (a re-extraction that gives the same result) keep their matches
    FeatureWriter(features, {"test": 1}, descriptor_dtype=np.float32).write("c.png", read_features(features, "c.png"))
    assert match_pairs(features, [("c.png", "b.png")], matches, progress=False) == 0


def test_a_file_without_records_is_matched_again_with_a_warning(features, tmp_path, caplog):
    """matches.h5 of an earlier release records neither settings nor features: its pairs cannot be trusted."""
    matches = tmp_path / "matches.h5"
    MatchWriter(matches).write_many([("a.png", "b.png", np.full(300, 299, np.int32), np.ones(300))])
    with caplog.at_level(logging.INFO, logger="d2sfm"):
        assert match_pairs(features, PAIRS, matches, progress=False) == 2
    assert "records neither the settings nor the features its 1 pairs" in caplog.text
    assert "1 pair(s) are matched again: the file does not record" in caplog.text
    assert not (_stored(matches, "a.png/b.png") == 299).all()
    with pytest.raises(D2sfmError, match="other settings"):  # the run recorded its settings: now they are checked
        match_pairs(features, PAIRS, matches, ratio=0.9, progress=False)


def test_the_pipelines_keep_an_earlier_release_s_pairs(features, tmp_path, caplog):
    """A pipeline's own record vouches for the pairs an earlier release matched: one pair added since must not
    cost matching every old pair again (hours on a large job)."""
    matches = tmp_path / "matches.h5"
    MatchWriter(matches).write_many([("a.png", "b.png", np.full(300, 299, np.int32), np.ones(300))])
    with caplog.at_level(logging.INFO, logger="d2sfm"):
        assert match_pairs(features, PAIRS, matches, progress=False, keep_unrecorded=True) == 1  # the new pair
    assert "1 pair(s) of an earlier release record no features; kept" in caplog.text
    assert (_stored(matches, "a.png/b.png") == 299).all()


def test_a_features_file_is_refused_as_the_output_even_with_overwrite(features):
    names = list_entries(features)
    before = features.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(D2sfmError) as refused:
            match_pairs(features, PAIRS, features, overwrite=overwrite, progress=False)
        assert str(refused.value).startswith(f"{features}: is a d2sfm features file, not a matches file")
        assert "-o matches.h5" in str(refused.value)
    assert features.read_bytes() == before and list_entries(features) == names


def test_an_hloc_features_file_is_refused_as_the_output(tmp_path):
    hloc = tmp_path / "hloc-features.h5"
    with h5py.File(hloc, "w") as handle:  # hloc's layout: no attributes at all
        handle.create_group("a.png").create_dataset("keypoints", data=np.zeros((3, 2), np.float32))
    with pytest.raises(D2sfmError, match="is a features file .*not a matches file"):
        MatchWriter(hloc, {"ratio": None})


def test_ray_workers_and_their_shards_keep_the_same_records(features, tmp_path):
    """The Ray backend's worker state, run in this process (no cluster needed): its shard records the settings and
    identities, and collecting it replaces a stale pair of matches.h5 and refuses a shard of other settings."""
    matches = tmp_path / "matches.h5"
    match_pairs(features, PAIRS, matches, progress=False)
    FeatureWriter(features, {"test": 1}, descriptor_dtype=np.float32).write("a.png", _features(120, 9))
    shard = tmp_path / "worker-0.h5"
    worker = MatchingWorker(str(features), str(shard), None, None, 1, "cpu")
    worker.match(PAIRS)
    assert len(_stored(shard, "a.png/b.png")) == 120
    writer = MatchWriter(matches, {"matcher": "mutual nearest neighbours", "min_similarity": None, "ratio": None})
    assert writer.copy_from(shard) == 1  # the stale pair is replaced; b-c, the same in both, is not copied again
    assert len(_stored(matches, "a.png/b.png")) == 120
    assert unmatched_pairs(PAIRS, matches, features) == []

    other = tmp_path / "worker-1.h5"
    MatchingWorker(str(features), str(other), None, 0.8, 1, "cpu").match(PAIRS[:1])
    with pytest.raises(D2sfmError, match="worker-1.h5: holds matches made with other settings"):
        writer.copy_from(other)
