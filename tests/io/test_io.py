"""features.h5 survives a writer killed at any moment: entries are complete or absent, never corrupt."""

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from d2sfm.errors import D2sfmError
from d2sfm.io.features import Features
from d2sfm.io.h5 import FeatureWriter, list_entries, open_hdf5, read_features
from d2sfm.io.matches_h5 import MatchWriter, matched_pairs, read_matches

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from d2sfm.io.h5 import FeatureWriter
    from d2sfm.io.features import Features
    writer = FeatureWriter(sys.argv[1], {"test": 1})
    index = len(writer.done)
    print("ready", flush=True)
    while True:
        n = 500 + index
        rng = np.random.default_rng(index)
        writer.write(f"nested/img{index:05d}.jpg", Features(
            rng.random((n, 2), dtype=np.float32), np.ones(n, np.float32), np.full(n, index, np.float32),
            rng.random((n, 512), dtype=np.float32), (640, 480)))
        print(f"wrote {index}", flush=True)
        index += 1
""")


def test_sigkill_during_writes_never_corrupts_the_file(tmp_path):
    """Kills paced by the writer's own progress (not by the clock, which a loaded machine stretches): each kill
    lands a random moment after a random number of finished writes, most of them in the middle of the next one."""
    path = tmp_path / "features.h5"
    rng = random.Random(0)
    for _ in range(6):
        before = len(list_entries(path)) if path.exists() else 0
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        for _ in range(rng.randint(1, 4)):
            line = process.stdout.readline().strip()
            assert line.startswith("wrote "), line
        reported = int(line.split()[1]) + 1  # writes finished and reported, counting those of earlier runs
        time.sleep(rng.uniform(0.0, 0.03))
        process.send_signal(signal.SIGKILL)
        process.wait()
        names = list_entries(path)
        for name in names:
            features = read_features(path, name)
            index = int(name[-9:-4])
            assert len(features.keypoints) == 500 + index and (features.scores == index).all()
        # every reported write survived; at most the writes between the report and the kill were added
        assert sorted(names) == [f"nested/img{index:05d}.jpg" for index in range(len(names))]
        assert reported <= len(names) and len(names) > before
    assert sorted(FeatureWriter(path, {"test": 1}).done) == sorted(list_entries(path))  # opens, salvaged if need be


def test_rewriting_an_entry_replaces_it(tmp_path):
    path = tmp_path / "f.h5"
    writer = FeatureWriter(path, {"x": 1})
    for n in (5, 3):
        writer.write("a/b.png", Features(np.zeros((n, 2), np.float32), np.ones(n, np.float32),
                                         np.ones(n, np.float32), np.zeros((n, 512), np.float32), (4, 4)))
    assert list_entries(path) == ["a/b.png"] and len(read_features(path, "a/b.png").keypoints) == 3


def _damage(path, name):
    """Zero the object header of ``name``: what a kill in the middle of HDF5's metadata flush can leave (a link to
    an object never written), made on purpose."""
    with h5py.File(path, "r") as handle:
        address = h5py.h5o.get_info(handle[name].id).addr
    with open(path, "r+b") as file:
        file.seek(address)
        file.write(bytes(64))


def test_a_damaged_features_file_keeps_its_readable_entries_and_is_salvaged_by_the_next_writer(tmp_path, caplog):
    path = tmp_path / "features.h5"
    writer = FeatureWriter(path, {"x": 1})
    for index in range(4):
        n = 10 + index
        writer.write(f"a/{index}.png", Features(np.full((n, 2), index, np.float32), np.ones(n, np.float32),
                                                np.ones(n, np.float32), np.zeros((n, 512), np.float32), (4, 4)))
    _damage(path, "a/3.png")
    assert list_entries(path) == ["a/0.png", "a/1.png", "a/2.png"]  # readers pass over the damaged entry
    with caplog.at_level("WARNING", logger="d2sfm"):
        again = FeatureWriter(path, {"x": 1})
    assert "damaged by an interrupted write" in caplog.text and "kept its 3 readable entries" in caplog.text
    assert sorted(again.done) == ["a/0.png", "a/1.png", "a/2.png"]
    with h5py.File(path, "r") as handle:  # the salvaged file is whole again, with its settings
        handle.visititems(lambda name, item: None)
    again.write("a/3.png", Features(np.full((13, 2), 3, np.float32), np.ones(13, np.float32), np.ones(13, np.float32),
                                    np.zeros((13, 512), np.float32), (4, 4)))
    assert [len(read_features(path, f"a/{i}.png").keypoints) for i in range(4)] == [10, 11, 12, 13]
    assert (read_features(path, "a/2.png").keypoints == 2).all()
    try:
        FeatureWriter(path, {"x": 2})  # the settings survived the salvage: other ones are still refused
    except Exception as error:  # noqa: BLE001
        assert "settings" in str(error) or "x" in str(error)
    else:
        raise AssertionError("other settings were accepted after the salvage")


def test_a_damaged_matches_file_keeps_its_readable_pairs_and_is_salvaged_by_the_next_writer(tmp_path):
    path = tmp_path / "matches.h5"
    pairs = [(f"{i}.png", f"{i + 1}.png", np.arange(5, dtype=np.int32) + i, np.ones(5)) for i in range(4)]
    MatchWriter(path).write_many(pairs)
    _damage(path, "3.png/4.png")
    matched_pairs(path)  # lists the links without opening each pair (cheap on a large job): it must not fail
    again = MatchWriter(path)  # opens every object first: the damaged pair is found, the rest copied
    assert again.done == matched_pairs(path) == {"0.png/1.png", "1.png/2.png", "2.png/3.png"}
    again.write_many(pairs[3:])
    assert [read_matches(path, name0, name1)[0][:, 1].tolist() for name0, name1, _, _ in pairs] == \
        [list(range(i, i + 5)) for i in range(4)]  # (keypoint in image 0, keypoint in image 1) per match


HOLDER = textwrap.dedent("""
    import sys, time, h5py
    with h5py.File(sys.argv[1], "r"):
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE",
                    reason="HDF5_USE_FILE_LOCKING=FALSE: HDF5 takes no lock here, there is nothing to wait for")
def test_a_file_another_process_holds_open_is_waited_for_then_named_in_one_line(tmp_path, caplog):
    """HDF5 refuses to open a file for writing while another process reads it (its file lock). A person looking into
    features.h5 during a long run made the next image's write fail the whole run; now the writer waits for the
    reader, and only a holder that outlasts the wait is an error, which says what holds the file."""
    path = tmp_path / "features.h5"
    writer = FeatureWriter(path, {"test": 1})
    features = Features(np.zeros((3, 2), np.float32), np.ones(3, np.float32), np.ones(3, np.float32),
                        np.zeros((3, 512), np.float32), (64, 48))
    writer.write("a.png", features)

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(D2sfmError) as refused:
            open_hdf5(path, "a", lock_wait=0)
        assert str(refused.value).startswith(f"{path}: cannot open as HDF5")
        assert "another process holds it open" in str(refused.value) and "\n" not in str(refused.value)
        with caplog.at_level(logging.WARNING, logger="d2sfm"):
            writer.write("b.png", features)  # the file was held a moment ago: this waits for the reader to close it
        assert holder.wait(timeout=30) == 0
        assert f"{path}: another process holds it open; waiting" in caplog.text  # a wait of over a second is said
    finally:
        holder.kill()
        holder.wait()
    assert list_entries(path) == ["a.png", "b.png"]


def test_finished_files_hold_no_scratch_group_and_an_interrupted_write_is_still_cleaned(tmp_path):
    """A script listing features.h5's keys saw a fake image, ``_d2sfm_incomplete``, the empty parent of the
    writers' scratch entries, in every file."""
    from d2sfm.io.h5 import SCRATCH_GROUP

    features = tmp_path / "features.h5"
    writer = FeatureWriter(features, {"test": 1})
    for name in ("a.png", "nested/b.png"):
        writer.write(name, Features(np.zeros((3, 2), np.float32), np.ones(3, np.float32), np.ones(3, np.float32),
                                    np.zeros((3, 512), np.float32), (4, 4)))
    matches = tmp_path / "matches.h5"
    MatchWriter(matches).write_many([("a.png", "nested/b.png", np.arange(3), np.ones(3))])
    with h5py.File(features, "r") as handle:
        assert sorted(handle.keys()) == ["a.png", "nested"]
    with h5py.File(matches, "r") as handle:
        assert sorted(handle.keys()) == ["a.png"]

    with h5py.File(features, "a") as handle:  # what a write killed before its move leaves
        handle.create_group(f"{SCRATCH_GROUP}/killed").create_dataset("keypoints", data=np.zeros((1, 2)))
    assert list_entries(features) == ["a.png", "nested/b.png"]  # readers pass over it
    again = FeatureWriter(features, {"test": 1})  # the resumed run removes it and finds the finished images
    assert sorted(again.done) == ["a.png", "nested/b.png"]
    again.write("c.png", read_features(features, "a.png"))
    with h5py.File(features, "r") as handle:
        assert sorted(handle.keys()) == ["a.png", "c.png", "nested"]


def test_each_image_records_a_digest_of_its_features(tmp_path):
    """What matches.h5 records per pair: equal for the same features written again, different for others."""
    from d2sfm.io.h5 import feature_identities

    path = tmp_path / "features.h5"
    writer = FeatureWriter(path, {"test": 1})
    rng = np.random.default_rng(0)
    first = Features(rng.random((5, 2), dtype=np.float32), np.ones(5, np.float32), np.ones(5, np.float32),
                     rng.random((5, 512), dtype=np.float32), (8, 8))
    writer.write("a.png", first)
    digest = feature_identities(path, ["a.png", "missing.png"])
    assert list(digest) == ["a.png"] and len(digest["a.png"]) == 32
    writer.write("a.png", first)
    assert feature_identities(path, ["a.png"]) == digest
    writer.write("a.png", Features(first.keypoints[:4], first.scales[:4], first.scores[:4], first.descriptors[:4],
                                   (8, 8)))
    assert feature_identities(path, ["a.png"]) != digest
