"""glibc's malloc told to keep freed memory for the next layer and image instead of handing it back at once.

On the CPU the network's feature maps are tens to hundreds of MB, allocated and freed for every layer of every image.
By default glibc hands such blocks back to the system when they are freed (blocks over its mmap threshold, at most
32 MiB, are unmapped; the heap's top is trimmed), so the next layer faults the same memory in again, zeroed by the
kernel. A top pad of 1 GiB makes the heap grow by 1 GiB more than asked and keep that much free at its top, and a
large block that fits in the free top is cut from it instead of being mapped afresh (one that does not fit is still
mapped and unmapped). Setting the pad also fixes glibc's adaptive mmap threshold at 128 KiB. On 2 cores the extract
command then ran 7-15% faster and its kernel time fell 2-4x, for 100-520 MiB more peak memory
(benchmarks/cpu_allocator.py, docs/benchmarks.md); the features are the same bit for bit (only where memory comes
from changes).

Commands set it at start (``run_main``) and so do Ray workers: their processes are d2sfm's (loader workers forked
from them inherit it, and keep about their own working set of decoded photos). A Python user's process is theirs:
``d2sfm.keep_freed_memory()`` sets it there on request. Where it is set, the memory kept by one stage is released
when the next begins (``release_freed_memory``, from ``PeakMemory``), so each stage's reported peak is its own.
Other C libraries (macOS, musl) are left as they are, and so is glibc under ``D2SFM_KEEP_FREED_MEMORY=0`` (or
false, no, off) and under a limit on the address space or the data segment (``ulimit -v``, ``ulimit -d``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger("d2sfm")

ENVIRONMENT = "D2SFM_KEEP_FREED_MEMORY"
TURNED_OFF = ("0", "false", "no", "off")
TOP_PAD_BYTES = 1 << 30
_M_TOP_PAD = -2  # glibc's malloc.h

_state: dict[str, bool] = {}


@functools.cache
def glibc_version() -> str | None:
    """'2.36' where this process runs on glibc, else None."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    return name.split()[-1] if name and name.startswith("glibc") else None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def memory_limited() -> bool:
    """A limit on the address space or the data segment (``ulimit -v``, ``ulimit -d``): the pad would spend up to
    1 GiB of it on nothing, and an image that fits would fail, so malloc is left as it is there."""
    try:
        import resource
    except ImportError:
        return False
    return any(resource.getrlimit(limit)[0] != resource.RLIM_INFINITY
               for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA))


def keep_freed_memory() -> bool:
    """Set glibc's top pad once per process; True where it is set. A no-op elsewhere, when
    ``D2SFM_KEEP_FREED_MEMORY`` turns it off and under ``ulimit -v`` or ``-d``."""
    if "applied" in _state:
        return _state["applied"]
    applied = False
    wanted = os.environ.get(ENVIRONMENT, "1").strip().lower() not in TURNED_OFF
    if wanted and glibc_version() is not None and not memory_limited():
        try:
            applied = _libc().mallopt(_M_TOP_PAD, TOP_PAD_BYTES) == 1
        except (OSError, AttributeError):
            applied = False
        if not applied:
            log.debug("glibc's mallopt refused the top pad; malloc keeps its defaults")
    _state["applied"] = applied
    return applied


def release_freed_memory() -> None:
    """Hand the memory that the pad keeps free back to the system (glibc's malloc_trim), where keep_freed_memory
    set it; a no-op elsewhere."""
    if _state.get("applied"):
        try:
            _libc().malloc_trim(0)
        except (OSError, AttributeError):
            pass
