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

torch.set_num_threads(max(1, os.cpu_count() or 1))


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
