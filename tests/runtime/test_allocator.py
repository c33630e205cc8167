"""glibc keeps the memory of freed feature maps for the next ones (d2sfm/runtime/allocator.py): a large block freed
and allocated again costs no new page faults, and D2SFM_KEEP_FREED_MEMORY=0 leaves glibc's behaviour as it is."""

import os
import subprocess
import sys
import textwrap

import pytest

from d2sfm.runtime.allocator import ENVIRONMENT, glibc_version, memory_limited

pytestmark = [
    pytest.mark.skipif(glibc_version() is None, reason="the setting is glibc's; this C library is another"),
    pytest.mark.skipif(memory_limited(), reason="this shell limits memory (ulimit -v or -d): d2sfm leaves malloc"),
]
# malloc settings a developer's shell may hold would change what the child processes measure
CLEAN = {key: value for key, value in os.environ.items()
         if not key.startswith("MALLOC_") and key not in ("GLIBC_TUNABLES", ENVIRONMENT)}

# A fresh process each (the setting is per process): what the network's loop does to memory, in numpy.
REUSE = textwrap.dedent("""
    import resource
    import numpy as np
    from d2sfm.runtime.allocator import keep_freed_memory
    applied = keep_freed_memory()
    held = [bytearray(1000) for _ in range(20000)]  # small blocks first: the heap grows (by the pad, when set)
    np.ones(25_000_000)  # a first 200 MB feature map: its pages are faulted in either way
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        np.ones(25_000_000)  # the next maps: allocated, written, freed
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    from d2sfm.pipeline.stages import resident_memory_mb
    from d2sfm.runtime.allocator import release_freed_memory
    kept = resident_memory_mb()
    release_freed_memory()  # as the next stage begins
    print(applied, faults, kept - resident_memory_mb())
""")


def page_faults(keep: str) -> tuple[bool, int, float]:
    """Whether the setting was applied, the page faults of the later blocks, MiB handed back at a stage's start."""
    result = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True,
                            env={**CLEAN, ENVIRONMENT: keep})
    assert result.returncode == 0, result.stderr
    applied, faults, released = result.stdout.split()
    return applied == "True", int(faults), float(released)


def test_freed_feature_maps_are_reused_without_page_faults_and_released_between_stages():
    applied, kept, released = page_faults("1")
    not_applied, default, _ = page_faults("0")
    assert applied and not not_applied
    # glibc's default unmaps each 200 MB block when it is freed, and the next one is faulted in again (about 100
    # faults per block with 2 MB transparent huge pages, 49,000 with 4 KB pages)
    assert default >= 100, default
    assert kept * 10 < default, (kept, default)
    assert released > 150  # the kept 200 MB go back to the system when the next stage begins


@pytest.mark.parametrize("limit", ["RLIMIT_AS", "RLIMIT_DATA"])
def test_a_memory_limit_or_the_environment_leaves_malloc_as_it_is(limit):
    """Under ``ulimit -v`` or ``-d`` the pad would spend up to 1 GiB of the allowed memory on nothing; and the
    variable turns it off in its usual spellings (the unlimited default sets it: the test above)."""
    def limited():
        import resource
        resource.setrlimit(getattr(resource, limit), (16 * 2**30, resource.RLIM_INFINITY))

    script = "from d2sfm.runtime.allocator import keep_freed_memory; print(keep_freed_memory())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=limited,
                            env=CLEAN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    for spelling in ("off", "False", " no "):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env={**CLEAN, ENVIRONMENT: spelling})
        assert result.stdout.strip() == "False", spelling
