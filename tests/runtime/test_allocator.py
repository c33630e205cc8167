"""glibc keeps the memory of freed feature maps for the next ones (d2sfm/runtime/allocator.py): a large block freed
and allocated again costs no new page faults, and D2SFM_KEEP_FREED_MEMORY=0 leaves glibc's behaviour as it is."""

import os
import subprocess
import sys
import textwrap

import pytest

from d2sfm.runtime.allocator import ENVIRONMENT, glibc_version

pytestmark = pytest.mark.skipif(glibc_version() is None, reason="the setting is glibc's; this C library is another")

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
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(keep: str) -> tuple[bool, int]:
    result = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True,
                            env={**os.environ, ENVIRONMENT: keep})
    assert result.returncode == 0, result.stderr
    applied, faults = result.stdout.split()
    return applied == "True", int(faults)


def test_freed_feature_maps_are_reused_without_page_faults_unless_turned_off():
    applied, kept = page_faults("1")
    not_applied, default = page_faults("0")
    assert applied and not not_applied
    # glibc's default unmaps each 200 MB block when it is freed, and the next one is faulted in again (about 100
    # faults per block with 2 MB transparent huge pages, 49,000 with 4 KB pages)
    assert default >= 100, default
    assert kept * 10 < default, (kept, default)
