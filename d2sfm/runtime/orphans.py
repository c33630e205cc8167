"""Helper processes that end with the process that started them.

PyTorch's image-loader processes outlive a main process killed with SIGKILL (or by the out-of-memory killer): the
one that notices its parent is gone then waits forever to hand over an image nobody will read, holding the
terminal's or the log pipe's output open. On Linux the kernel can send the helper SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); elsewhere this does nothing and PyTorch's own watchdog is all there is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys

from d2sfm.runtime.run_lock import close_inherited_locks

PR_SET_PDEATHSIG = 1


def _end_with(parent_pid: int, *_) -> None:
    close_inherited_locks()
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def end_with_this_process():
    """A ``worker_init_fn`` for DataLoader (also usable as any forked helper's first call) that kills the helper
    when the process calling this now dies, and leaves the parent's folder locks to the parent alone. Create the
    loader's iterator in the main thread: the kernel watches the thread that forked the helper."""
    return functools.partial(_end_with, os.getpid())
