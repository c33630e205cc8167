"""glibc's malloc told to keep freed memory for the next layer and image instead of handing it back at once.

On the CPU the network's feature maps are tens to hundreds of MB, allocated and freed for every layer of every image.
By default glibc returns such blocks to the system when they are freed (the heap's top is trimmed past 128 KiB,
larger blocks are unmapped), so the next layer faults the same memory in again, zeroed by the kernel. With a top pad
of 1 GiB the heap grows and shrinks in 1 GiB steps, and large blocks are cut from memory the process already holds.
On 2 cores the extract command then ran 7-15% faster and its kernel time fell 2-4x, for 100-520 MiB more peak
memory (benchmarks/cpu_allocator.py, docs/benchmarks.md); the features are the same bit for bit (only where
memory comes from changes).

Commands set it at start (``run_main``) and so do Ray workers: their processes are d2sfm's. A Python user's process
is theirs: ``d2sfm.keep_freed_memory()`` sets it there on request. Memory kept by one stage is released when the
next begins (``release_freed_memory``, from ``PeakMemory``), so each stage's reported peak is its own. Other C
libraries (macOS, musl) are left as they are; ``D2SFM_KEEP_FREED_MEMORY=0`` leaves glibc as it is too, and so does
a limit on the address space (``ulimit -v``).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("d2sfm")

ENVIRONMENT = "D2SFM_KEEP_FREED_MEMORY"
TOP_PAD_BYTES = 1 << 30
_M_TOP_PAD = -2  # glibc's malloc.h

_state: dict[str, bool] = {}


def glibc_version() -> str | None:
    """'2.36' where this process runs on glibc, else None."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return name.split()[-1] if name and name.startswith("glibc") else None


def _address_space_limited() -> bool:
    """A limit on the address space (``ulimit -v``): the pad would spend up to 1 GiB of it on nothing, and an image
    that fits would fail, so malloc is left as it is there."""
    try:
        import resource
    except ImportError:
        return False
    return resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY


def keep_freed_memory() -> bool:
    """Set glibc's top pad once per process; True where it is set. A no-op elsewhere and when
    ``D2SFM_KEEP_FREED_MEMORY=0`` or under ``ulimit -v``."""
    if "applied" in _state:
        return _state["applied"]
    applied = False
    wanted = os.environ.get(ENVIRONMENT, "1").strip() != "0"
    if wanted and glibc_version() is not None and not _address_space_limited():
        try:
            applied = ctypes.CDLL(None).mallopt(_M_TOP_PAD, TOP_PAD_BYTES) == 1
        except (OSError, AttributeError):
            applied = False
        if not applied:
            log.debug("glibc's mallopt refused the top pad; malloc keeps its defaults")
    _state["applied"] = applied
    return applied


def release_freed_memory() -> None:
    """Hand the memory that malloc keeps free back to the system (glibc's malloc_trim); a no-op elsewhere."""
    if glibc_version() is not None:
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass
