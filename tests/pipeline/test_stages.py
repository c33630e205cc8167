"""Stages record time and peak memory per stage; the synthetic large-scene layout; Ray batch sizes."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from d2sfm.cluster.ray_backend import balanced_batch
from d2sfm.pipeline.stages import Stages, peak_memory_mb, resident_memory_mb
from d2sfm.runtime.allocator import release_freed_memory
from d2sfm.synthetic.scene import courtyard, ring_poses, view_name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-stage peak reads Linux's /proc")
def test_each_stage_reports_its_own_peak_memory_and_the_process_keeps_its_own():
    def allocate() -> None:
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched, and held long enough for the sampler to see it
        time.sleep(0.3)
        assert block.sum() > 0

    allocate()  # a peak from before, as earlier work in the same process leaves
    release_freed_memory()  # as a stage starts (where d2sfm.runtime.allocator set the pad, malloc kept the block)
    # read after the release: while the block is kept resident, Linux reports the current RSS as VmHWM, above the
    # high-water mark it has recorded, and the value it reports later may be a little lower
    process_peak = peak_memory_mb()
    baseline = resident_memory_mb()
    stages = Stages()
    stages.run("big", False, allocate)
    stages.run("small", False, lambda: None)
    assert stages.peak_memory_mb["big"] > baseline + 250
    assert stages.peak_memory_mb["small"] < stages.peak_memory_mb["big"] - 250  # each stage its own
    assert peak_memory_mb() >= process_peak  # not reset: /usr/bin/time still reads the process's peak
    stages.run("skipped", True, allocate)
    assert "skipped" not in stages.peak_memory_mb and set(stages.times) == {"big", "small"}


def test_ring_layout_keeps_cameras_inside_the_yard_and_names_sort_in_order():
    poses = ring_poses(1000)
    centres = np.array([centre for _, centre in poses])
    assert len(poses) == 1000 and np.abs(centres[:, 0]).max() < 5.5  # the side walls are at x = +-6
    assert len({tuple(c.round(3)) for c in centres}) == 1000
    planes = courtyard()
    assert len(planes) == 12
    for rotation, centre in poses[::50]:
        forward = rotation[2]
        assert forward[1] > 0  # every camera looks towards the back wall
    names = [view_name(index, 1000) for index in range(1, 1001)]
    assert names == sorted(names) and names[0] == "view_0001.png"
    assert view_name(7, 12) == "view_07.png"  # small scenes keep the names they always had


def test_ray_batches_give_every_worker_several_tasks():
    assert balanced_batch(48, 8, 2) == 6  # 8 tasks for 2 workers
    assert balanced_batch(10_000, 8, 2) == 8  # never above the requested size
    assert balanced_batch(1128, 256, 2, floor=16) == 141
    assert balanced_batch(40, 256, 4, floor=16) == 16  # matching blocks stay large enough to reuse features
    assert balanced_batch(3, 8, 4) == 1
