"""A fresh interpreter in which some packages cannot be imported: what a machine without them (a GPU box with no
pycolmap) or with a broken one (a CUDA library that does not load) shows a command. Python runs the
``sitecustomize`` module of the folder put first on PYTHONPATH before anything else."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def blocking_environment(folder: Path, packages: tuple[str, ...], error: str = "ModuleNotFoundError") -> dict:
    """os.environ with PYTHONPATH set so that importing any of ``packages`` (or a submodule) raises ``error``
    (an exception class name: ModuleNotFoundError for a missing package, OSError for one that cannot load)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {tuple(packages)!r}:\n"
        f"            raise {error}(f'No module named {{name!r}}' if {error!r} == 'ModuleNotFoundError' else "
        "f'{name}: cannot open shared object file')\n"
        "sys.meta_path.insert(0, Block())\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}
