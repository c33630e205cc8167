"""What the hostile-input tests share: a small finished scene to damage, the commands run as a user runs them, and
the checks every case makes (one line naming the file and the fix, the exit status, good outputs unchanged).

The scene is the synthetic courtyard at 320x240, 8 views, single-scale with Winograd convolutions: a whole
``reconstruct`` in about 20 s on 2 cores, so a case can afford to run the real command.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from d2sfm.synthetic.scene import render_scene
from tests.in_process import command_in_process

FAST = ("--single-scale", "--conv", "winograd", "--quiet")
TEMPORARY = re.compile(r"(\.part($|[.-])|-wal$|-shm$|-journal$)")  # what an interrupted write leaves


def command(module: str, *args, timeout: float = 600, in_process: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
    """``python -m d2sfm.<module> ARGS`` as a user runs it, output captured. ``in_process`` runs the command's
    ``main`` in the test process instead (2-4 s of interpreter start and imports less): for the runs that set a
    case up or finish it, never for the refusal a case is about, whose stderr must be the whole process's."""
    if in_process:
        assert not kwargs, f"{sorted(kwargs)}: a fresh process is needed for these"
        return command_in_process(f"d2sfm.{module}", *args)
    return subprocess.run([sys.executable, "-m", f"d2sfm.{module}", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def reconstruct(scene: Path, *args, weights: Path, **kwargs) -> subprocess.CompletedProcess:
    return command("reconstruct", scene, "--demo", *FAST, "--weights", weights, *args, **kwargs)


def assert_one_line_error(run: subprocess.CompletedProcess, *needles: str, status: int = 2) -> str:
    """Exit status ``status``, and stderr is exactly one ``error:`` line holding every needle (the file, the fix)."""
    assert run.returncode == status, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert "Traceback" not in run.stderr and "\x1b[" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock) and its SHA-256: to show that good outputs were left as they were."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != ".d2sfm.lock"}


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of interrupted writes (the dense workspace aside, which is resumable)."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if TEMPORARY.search(path.name) and path.name != "dense.part")


@pytest.fixture(scope="session")
def finished_scene(tmp_path_factory, weights_path) -> Path:
    """A finished reconstruction of the small courtyard (default pipeline: refinement on); copy it before use."""
    scene = tmp_path_factory.mktemp("hostile") / "courtyard"
    render_scene(scene, count=8, width=320, height=240, focal=256.0)
    # a fresh process: test_killed_anywhere compares killed runs' features with these bit for bit, and a process of
    # its own computes with the threads they have (the test process may have set its own count)
    run = reconstruct(scene, weights=weights_path)
    assert run.returncode == 0, run.stderr
    return scene


@pytest.fixture
def scene(finished_scene, tmp_path) -> Path:
    """A private copy of the finished scene."""
    copy = tmp_path / "scene"
    shutil.copytree(finished_scene, copy)
    (copy / ".d2sfm.lock").unlink(missing_ok=True)
    return copy


@pytest.fixture
def tiny_images(tmp_path) -> Path:
    """Four 96x72 views of the courtyard (enough for extraction and matching, seconds each)."""
    folder = tmp_path / "tiny"
    render_scene(folder, count=4, width=96, height=72, focal=80.0)
    return folder / "images"


os.environ.setdefault("PYTHONUNBUFFERED", "1")  # subprocesses' lines arrive as they are printed
