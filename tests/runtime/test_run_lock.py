"""The folder lock: a forked image loader does not keep its parent's folder locked."""

import fcntl
import os
import sys
import time

import pytest

from d2sfm.runtime.orphans import end_with_this_process
from d2sfm.runtime.run_lock import LOCK_NAME, folder_lock


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
