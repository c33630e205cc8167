"""Every third-party package the code imports is declared in pyproject.toml, where a fresh install will find it.

A package that arrives only as another's dependency (Pillow through torchvision, say) works on the machine where
it happens to be installed and breaks on a fresh one; so does a test import missing from the ``test`` extra. CI
installs from nothing (.ci/run), and this test names the culprit before that install fails.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11 (tomllib)")

REPO = Path(__file__).resolve().parents[1]
# The repository's own packages, and the tests' helper modules (tests/*.py that are not tests: pytest puts tests/
# on the import path)
LOCAL = {"d2sfm", "pipelines", "benchmarks", "tests"} | {path.stem for path in (REPO / "tests").glob("*.py")
                                                 if not path.name.startswith("test_")}
# Imported only from an external checkout of the original D2-Net code, by the scripts that compare against it.
EXTERNAL_CHECKOUTS = {"lib"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            for requirement in requirements}


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return {"base": _requirement_names(project["dependencies"]),
            **{name: _requirement_names(requirements) for name, requirements in extras.items()}}


def _top_level_imports(folder: Path) -> dict[str, str]:
    """{module: a file importing it} for every absolute import in the folder's Python files."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _third_party(imports: dict[str, str]) -> dict[str, str]:
    return {module: where for module, where in imports.items()
            if module not in sys.stdlib_module_names and module not in LOCAL | EXTERNAL_CHECKOUTS}


@pytest.mark.parametrize("folder,allowed", [
    ("d2sfm", None),  # the package: base dependencies, or an optional extra where the import is guarded
    ("pipelines", None),
    ("benchmarks", None),
    ("tests", ("base", "test")),  # the README's test command installs only these
])
def test_every_import_is_declared(folder, allowed):
    declared = _declared()
    sets = declared.values() if allowed is None else [declared[name] for name in allowed]
    names = set().union(*sets)
    distributions = packages_distributions()
    missing = []
    for module, where in sorted(_third_party(_top_level_imports(REPO / folder)).items()):
        providers = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not providers & names:
            missing.append(f"{module} (imported by {where}; installed from {sorted(providers) or 'nowhere'})")
    assert not missing, f"imports not declared in pyproject.toml for {folder}/: " + "; ".join(missing)


def test_the_test_extra_holds_what_the_tests_need():
    """The imports this checks for are real: matplotlib draws the HPatches figures the tests look at."""
    assert {"pytest", "matplotlib"} <= _declared()["test"]
    assert {"torch", "pycolmap", "pillow", "opencv-python"} <= _declared()["base"]


def test_png_encoding_survives_pycolmap_loaded_first(tmp_path):
    """pycolmap 4.2 loaded before the system zlib makes OpenCV's and Pillow's PNG encoders abort ("free(): invalid
    pointer"); importing d2sfm first loads zlib first. Run in a fresh interpreter, as a user's script would."""
    import subprocess

    script = ("import d2sfm, pycolmap, numpy as np, cv2, io\n"
              "from PIL import Image\n"
              "pixels = np.random.default_rng(0).integers(0, 255, (750, 1758, 3), dtype=np.uint8)\n"
              "ok, encoded = cv2.imencode('.png', pixels)\n"
              "Image.fromarray(pixels).save(io.BytesIO(), 'PNG')\n"
              "assert ok and np.array_equal(cv2.imdecode(encoded, cv2.IMREAD_COLOR), pixels)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]


def test_feature_files_and_export_need_no_torch(tmp_path):
    """d2sfm.io (every module) and the export command read and write features without a network: they must start
    without importing torch (2-3 s of every such command, and of its --help)."""
    import subprocess

    script = ("import importlib, pkgutil, sys, d2sfm.io, d2sfm.commands.export, d2sfm.commands.cli\n"
              "for module in pkgutil.iter_modules(d2sfm.io.__path__, 'd2sfm.io.'):\n"
              "    importlib.import_module(module.name)\n"
              "assert 'torch' not in sys.modules, 'torch imported'\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]


def test_extraction_and_matching_run_without_pycolmap(tmp_path, weights_path):
    """A GPU box or a cluster worker may have torch and no pycolmap (the lent GPU machines have none, and
    benchmarks/gpu_acceptance.py extracts and matches there): the extract and match commands, their Python API and
    the patch alignment must not import it. pycolmap and Ray are made unimportable in a fresh interpreter."""
    import subprocess

    import cv2
    import numpy as np

    from tests.import_blocker import blocking_environment

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), (128, 96), interpolation=cv2.INTER_CUBIC)
    for index in range(2):
        cv2.imwrite(str(photos / f"{index}.png"), np.roll(texture, 3 * index, axis=1))
    (tmp_path / "pairs.txt").write_text("0.png 1.png\n")
    env = blocking_environment(tmp_path / "block", ("pycolmap", "ray"))
    commands = [
        [sys.executable, "-c", "import pycolmap"],  # the blocker works
        [sys.executable, "-m", "d2sfm.extract", str(photos), "-o", "features.h5", "--weights", str(weights_path),
         "--quiet"],
        [sys.executable, "-m", "d2sfm.match", "features.h5", "pairs.txt", "-o", "matches.h5", "--quiet"],
        [sys.executable, "-c", "import d2sfm, d2sfm.refinement.patch_alignment, d2sfm.cluster.extract; "
         "d2sfm.pairs(['a', 'b']); d2sfm.FeatureConfig()"],
    ]
    results = [subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env) for command in commands]
    assert results[0].returncode != 0 and "pycolmap" in results[0].stderr
    for result in results[1:]:
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "matches.h5").is_file()
