"""Atomic writes: complete files only, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from d2sfm.io.atomic import atomic_path, write_text_atomic


def test_atomic_write_gives_a_complete_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "model.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as scratch:
            scratch.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
