"""The extraction command's writer thread: order, nothing lost on close, errors surface, memory bounded."""

from __future__ import annotations

import threading
import time

import pytest

from d2sfm.runtime.background import BackgroundWriter


def test_writes_everything_in_order_before_close_returns():
    written = []

    def slow_write(name, value):
        time.sleep(0.01)
        written.append((name, value))

    with BackgroundWriter(slow_write, max_pending=4) as writer:
        for index in range(20):
            writer.put(f"image{index}", index)
    assert written == [(f"image{index}", index) for index in range(20)]


def test_a_write_error_reaches_the_producer_and_nothing_after_it_is_written():
    written, all_queued = [], threading.Event()

    def write(name):
        all_queued.wait(timeout=5)
        if name == "bad":
            raise OSError("disk full")
        written.append(name)

    writer = BackgroundWriter(write)
    for name in ("a", "bad", "c"):
        writer.put(name)
    all_queued.set()
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert written == ["a"]
    writer.close()  # reported once


def test_a_slow_disk_blocks_the_producer_instead_of_filling_memory():
    writing, release = threading.Event(), threading.Event()
    writer = BackgroundWriter(lambda item: (writing.set(), release.wait()), max_pending=2)
    writer.put(0)
    assert writing.wait(timeout=5)  # item 0 is being written
    writer.put(1)
    writer.put(2)  # two queued
    blocked = threading.Thread(target=writer.put, args=(3,))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # the fourth waits for room
    release.set()
    blocked.join(timeout=5)
    writer.close()
    assert not blocked.is_alive()
