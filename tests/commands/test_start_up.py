"""A command answers --help, a bad option and a missing input at once: the work's imports (torch alone is 1.5-3 s)
come after the options are parsed and checked (pycolmap, a tenth of a second, loads first: run_main's signal
handlers must come after its own). Each case runs the command
as a user does, ``python -m d2sfm.X`` in a fresh interpreter, with Python's own record of what it imported
(``-X importtime``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.import_blocker import blocking_environment

HEAVY = {"torch", "torchvision", "scipy", "ray", "viser", "matplotlib"}

# python -m d2sfm.evaluate is left out: its parser is built from the protocols' own option lists (pipelines/),
# which import torch, and each of its protocols runs for minutes.
CASES = {
    "reconstruct --help": (["d2sfm.reconstruct", "--help"], 0),
    "extract --help": (["d2sfm.extract", "--help"], 0),
    "match --help": (["d2sfm.match", "--help"], 0),
    "localize aachen --help": (["d2sfm.localize", "aachen", "--help"], 0),
    "localize images --help": (["d2sfm.localize", "images", "--help"], 0),
    "refine --help": (["d2sfm.refine", "--help"], 0),
    "train --help": (["d2sfm.train", "--help"], 0),
    "viz pair --help": (["d2sfm.viz", "pair", "--help"], 0),
    "view --help": (["d2sfm.view", "--help"], 0),
    "synthetic --help": (["d2sfm.synthetic", "--help"], 0),
    "export --help": (["d2sfm.export", "--help"], 0),
    "an option out of range": (["d2sfm.reconstruct", "scene", "--max-edge", "3"], 2),
    "options that contradict": (["d2sfm.reconstruct", "scene", "--mesh"], 2),
    "a training crop too small": (["d2sfm.train", "--data", "homography", "--crop", "8"], 2),
    "a missing photo folder": (["d2sfm.extract", "no-such-folder"], 2),
    "a missing features file": (["d2sfm.match", "no-such.h5", "pairs.txt"], 2),
}


def imported_modules(stderr: str) -> set[str]:
    """Top-level package names from ``-X importtime`` lines ("import time: self | cumulative | module")."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("case", CASES)
def test_answers_without_the_works_imports(case, tmp_path):
    arguments, status = CASES[case]
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", *arguments], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    imported = imported_modules(run.stderr)
    assert "d2sfm" in imported, run.stderr[-2000:]  # the record is there
    assert not HEAVY & imported, f"{case} imported {sorted(HEAVY & imported)}"
    messages = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    if status == 0:
        assert run.returncode == 0 and "usage:" in run.stdout, run.stdout[-500:] + "\n".join(messages)
    else:
        assert run.returncode == status and len(messages) == 1 and messages[0].startswith("error:"), messages


def test_a_library_that_cannot_load_is_one_line_naming_it(tmp_path):
    """The work's imports now run inside run_main, whose OSError is a folder or disk to fix: a torch that cannot be
    loaded (a broken CUDA library is an OSError) must instead say the installation is at fault, in one line."""
    run = subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", "scene", "--demo"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120,
                         env=blocking_environment(tmp_path / "block", ("torch",), error="OSError"))
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith("error: d2sfm's libraries could not be loaded")
    assert "torch: cannot open shared object file" in lines[0]
    assert "reinstall" in lines[0] and not (tmp_path / "scene").exists()  # refused before any work
