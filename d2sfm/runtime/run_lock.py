"""One run at a time in an output folder, and what a killed run left behind cleared before the next one starts.

Every output is written under a temporary name and renamed into place (``fileutil.atomic_path``), so a run killed
with SIGKILL, a power cut or a full disk leaves those temporary files beside the outputs. They are only safe to
delete when no other run is writing there, which is what the lock says: ``flock`` on ``.d2sfm.lock`` in the folder,
released by the kernel when the process dies however it dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from d2sfm.errors import D2sfmError

LOCK_NAME = ".d2sfm.lock"
# fileutil.atomic_path's names: "." + target name + "." + mkstemp's 8 random characters + ".part" (or ".part.ply"),
# and the side files SQLite gives a database written under such a name
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.ply)?(-wal|-shm|-journal)?$")

log = logging.getLogger("d2sfm")
_HELD: set[int] = set()  # descriptors of the locks this process holds (see close_inherited_locks)


def is_housekeeping(name: str) -> bool:
    """Whether a folder entry is d2sfm's lock or the temporary file of a killed write: never a user's file, so
    listings that decide what a folder holds leave it out (a trailing "/" of a folder's name is ignored)."""
    return name == LOCK_NAME or bool(TEMPORARY.match(name.rstrip("/")))


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[list[Path]]:
    """Hold ``folder`` for this process; a second run there is a one-line error instead of two runs renaming each
    other's files. Yields the temporary files of killed runs that were removed (the pattern is d2sfm's own and
    ends in ``.part``: no photo matches it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise D2sfmError(f"{folder}: another d2sfm run ({holder}) is writing in this folder; wait for it to "
                             "finish (or stop it), then rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        _HELD.add(handle.fileno())
        try:
            yield remove_stale_temporaries(folder)
        finally:
            _HELD.discard(handle.fileno())


def close_inherited_locks() -> None:
    """In a forked helper (an image loader): close its copies of the folder locks' descriptors. An flock belongs
    to the open file, which a fork shares; a helper still holding a copy would keep the folder locked after its
    parent was killed, until the kernel has ended the helper too, and a rerun started at once would be refused."""
    for descriptor in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD.clear()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed run left under ``folder`` (call only while holding its lock)."""
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if TEMPORARY.match(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("  removed %d temporary file(s) of an interrupted run in %s", len(removed), folder)
    return removed
