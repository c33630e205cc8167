"""Stages record time and peak memory per stage; a run folder's --overwrite deletes only what d2sfm wrote; the
synthetic large-scene layout; Ray batch sizes."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from d2sfm.cluster.ray_backend import balanced_batch
from d2sfm.errors import D2sfmError
from d2sfm.pipeline.stages import RunFolder, Stages, peak_memory_mb, resident_memory_mb
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


def test_overwrite_refuses_a_folder_that_d2sfm_did_not_write(tmp_path):
    """``localize ... --output FOLDER --overwrite`` deleted the whole folder, whatever it held."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(D2sfmError, match=r"mine: not a d2sfm output folder \(it holds thesis.txt\); choose an empty"):
        RunFolder(mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    scene = tmp_path / "scene"  # a reconstructed scene given as a localization's output: its record is another
    (scene / "images").mkdir(parents=True)
    (scene / "stats.json").write_text("{}")
    (scene / "features.h5").write_bytes(b"features")
    with pytest.raises(D2sfmError, match=r"it holds images/, stats.json\)"):
        RunFolder(scene, overwrite=True)
    assert (scene / "features.h5").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunFolder(empty, overwrite=True).state == {}
    killed = tmp_path / "killed"  # a first run killed before any stage finished: no record, its outputs only
    killed.mkdir()
    (killed / "features.h5").write_bytes(b"half")
    (killed / "pairs.txt").write_text("a b\n")
    RunFolder(killed, overwrite=True)
    assert list(killed.iterdir()) == []


def test_overwrite_deletes_what_d2sfm_wrote_and_keeps_the_rest(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.path("features.h5").write_bytes(b"features")
    (folder.path("sparse-final") / "0").mkdir(parents=True)
    folder.path("custom.bin").write_bytes(b"a new pipeline's output, named through path()")
    folder.stages.run("extract", False, lambda: None)  # saves the record
    assert "custom.bin" in json.loads((tmp_path / "run" / "state.json").read_text())["written_outputs"]
    for name in ("thesis.txt", ".features.h5.abcd1234.part", "sparse-final.old", "database.db-wal"):
        (tmp_path / "run" / name).write_text("x")
    again = RunFolder(tmp_path / "run", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["thesis.txt"]
    assert again.state == {} and again.stages.times == {}
    resumed = RunFolder(tmp_path / "run")  # without overwrite a record is read back as it was
    assert resumed.state == {}


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
