"""Shared test fixtures: where ../shared is, and the weights every test uses.

Integration tests need ../shared (real images, reference outputs, weights). They skip with a reason when it is
absent on a developer's machine, but in CI (CI=true) its absence is an error, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("D2SFM_SHARED", REPO_ROOT.parent / "shared"))
REFERENCE_DIR = SHARED / "reference" / "d2net_original_hed_vgg16"
REFERENCE_IMAGES = ["03903474_1471484089", "10265353_3838484249"]

# Each pytest-xdist worker (the README's test command runs two) takes its share of the cores, and so does every
# command a test starts (OMP_NUM_THREADS, inherited): two workers of two OpenMP threads each on 2 cores would spend
# their time waiting on each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


# The slowest files first. The README's test command runs two pytest-xdist workers, each taking whole files
# (--dist loadfile: a module's fixtures are built once); a long file handed out last would leave one core idle
# while it runs. Seconds on 2 cores, from --durations.
SLOW_FIRST = ("pipeline/test_localize_images.py", "pipeline/test_reconstruct.py", "cluster/test_cluster.py",
              "localization/test_localize_aachen.py", "test_gpu_acceptance.py", "hostile/test_killed_anywhere.py",
              "training/test_training.py", "localization/test_localize_inloc.py", "commands/test_extract_cli.py",
              "evaluation/test_evaluate_gt.py", "hostile/test_names.py")


def pytest_collection_modifyitems(config, items):
    rank = {REPO_ROOT / "tests" / name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)), len(SLOW_FIRST)))  # stable: the rest keep their order


def _require(path: Path) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{path} is missing: CI must run with ../shared beside the clone")
    pytest.skip(f"{path} is absent (../shared is not beside this checkout); integration test skipped")


@pytest.fixture(scope="session")
def shared() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def weights_path() -> Path:
    return _require(Path(os.environ.get("D2SFM_TEST_WEIGHTS", SHARED / "weights" / "d2_hed_vgg16.pth")))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _require(REFERENCE_DIR)


@pytest.fixture(scope="session")
def sacre_coeur_images() -> Path:
    return _require(SHARED / "data" / "sacre_coeur" / "images")
