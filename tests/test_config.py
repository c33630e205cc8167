"""The config dataclasses refuse what the command line refuses, in one line, before any work: a Python user's
MatchConfig(ratio=5) or FeatureConfig(scales=(16,)) must not run (the latter would start a job of tens of GiB)."""

from __future__ import annotations

import pytest

from d2sfm.config import (
    AachenConfig,
    DenseConfig,
    FeatureConfig,
    ImagesLocalizationConfig,
    InLocConfig,
    MappingConfig,
    MatchConfig,
    PairsConfig,
    RefineConfig,
    RunConfig,
)
from d2sfm.errors import D2sfmError
from d2sfm.refinement.settings import METHODS
from d2sfm.sfm import cameras, database, defaults

REFUSED = [
    (MatchConfig, {"ratio": 5.0}, "ratio"),
    (MatchConfig, {"ratio": 0.0}, "ratio"),
    (MatchConfig, {"min_similarity": -3}, "min_similarity"),
    (MatchConfig, {"ratio": "0.9"}, "not a number"),
    (PairsConfig, {"top_k": 0}, "top_k"),
    (PairsConfig, {"overlap": -1}, "overlap"),
    (FeatureConfig, {"scales": (16,)}, "scales"),
    (FeatureConfig, {"scales": ()}, "scales"),
    (FeatureConfig, {"max_keypoints": -1}, "max_keypoints"),
    (FeatureConfig, {"conv": "fft"}, "conv"),
    (RunConfig, {"loader_workers": -3}, "loader_workers"),
    (RunConfig, {"batch_size": 0}, "batch_size"),
    (RunConfig, {"gpu_memory_gib": float("nan")}, "gpu_memory_gib"),
    (RunConfig, {"ray_workers": 10**6}, "ray_workers"),
    (RunConfig, {"loader_workers": 1000}, "loader_workers"),
    (MappingConfig, {"camera_model": "NOPE"}, "camera_model"),
    (ImagesLocalizationConfig, {"camera_model": "NOPE"}, "camera_model"),
    (MappingConfig, {"mapper": "bogus"}, "mapper"),
    (MappingConfig, {"camera_mode": "per-photo"}, "camera_mode"),
    (MappingConfig, {"refine_intrinsics": "some"}, "refine_intrinsics"),
    (MappingConfig, {"min_model_size": 1}, "min_model_size"),
    (MappingConfig, {"abs_pose_min_inlier_ratio": 1.5}, "abs_pose_min_inlier_ratio"),
    (RefineConfig, {"method": "bogus"}, "method"),
    (DenseConfig, {"max_image_size": 10}, "max_image_size"),
    (AachenConfig, {"version": "2.0"}, "version"),
    (AachenConfig, {"min_inliers": 0}, "min_inliers"),
    (InLocConfig, {"top_k": 0}, "top_k"),
    (InLocConfig, {"ransac_max_error": -1.0}, "ransac_max_error"),
    (ImagesLocalizationConfig, {"pairs": "sequential"}, "pairs"),
    (ImagesLocalizationConfig, {"min_inliers": 3}, "min_inliers"),
]


@pytest.mark.parametrize("config, values, named", REFUSED, ids=[f"{c.__name__}-{next(iter(v))}" for c, v, _ in REFUSED])
def test_a_bad_value_is_a_one_line_refusal_naming_the_field(config, values, named):
    with pytest.raises(D2sfmError) as refusal:
        config(**values)
    message = str(refusal.value)
    assert named in message and "\n" not in message


def test_the_defaults_and_the_off_values_are_accepted():
    for config in (MatchConfig, PairsConfig, FeatureConfig, RunConfig, MappingConfig, RefineConfig, DenseConfig,
                   AachenConfig, InLocConfig, ImagesLocalizationConfig):
        config()
    MatchConfig(min_similarity=None, ratio=None)
    RunConfig(loader_workers=0, ray_workers=None, batch_size=None)
    InLocConfig(ransac_max_error=None)
    MappingConfig(camera_mode=None)
    import numpy as np  # numpy's numbers, as a script computes them, are numbers

    PairsConfig(top_k=np.int64(10))
    MatchConfig(ratio=np.float32(0.9))


def test_the_choices_named_without_pycolmap_are_those_the_stages_know():
    """The config checks names from d2sfm.sfm.defaults (importable without pycolmap); the stages map them to
    pycolmap's values: both lists must stay the same."""
    assert tuple(database.CAMERA_MODES) == defaults.CAMERA_MODES
    assert set(cameras.INTRINSICS_REFINEMENT) == set(defaults.INTRINSICS_REFINEMENTS)
    assert RefineConfig().method in METHODS
