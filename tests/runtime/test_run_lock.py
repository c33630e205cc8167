"""The folder lock: a forked image loader does not keep its parent's folder locked."""

import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

from d2sfm.io.atomic import atomic_path
from d2sfm.runtime.orphans import end_with_this_process
from d2sfm.runtime.run_lock import LOCK_NAME, folder_lock, is_housekeeping


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and flock semantics of Linux")
def test_a_forked_helper_leaves_the_folder_lock_to_its_parent(tmp_path):
    """A helper forked while the lock is held shares the lock's open file; once it has run the loaders' init, the
    lock ends with the parent's hold even while the helper still lives (a rerun after a SIGKILL is not refused)."""
    with folder_lock(tmp_path):
        init = end_with_this_process()  # made in the parent, as DataLoader's worker_init_fn is
        child = os.fork()
        if child == 0:  # the helper: its init, then alive for a while
            init()
            time.sleep(3)
            os._exit(0)
        time.sleep(0.5)
    try:
        with open(tmp_path / LOCK_NAME, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the helper still held it
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_housekeeping_is_the_lock_and_killed_writes_only(tmp_path):
    """What the listings of scene, training and run folders leave out: d2sfm's lock and the scratch names its atomic
    writes use (with SQLite's side files), never a user's file that merely looks alike."""
    with atomic_path(tmp_path / "features.h5") as scratch:
        scratch_name = Path(scratch).name
        assert is_housekeeping(scratch_name) and is_housekeeping(scratch_name + "-wal")
    assert is_housekeeping(LOCK_NAME) and is_housekeeping(scratch_name + "/")  # a scratch folder, listed with "/"
    for name in ("features.h5", "IMG_0001.part", "notes.part.txt", ".hidden", "images/", LOCK_NAME + ".bak"):
        assert not is_housekeeping(name), name
