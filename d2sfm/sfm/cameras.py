"""Camera intrinsics a user knows, and which intrinsics the bundle adjustments may change.

Benchmarks with calibrated cameras (Strecha, ETH3D) give the pipeline the known K: the reconstruction then
measures the features and the mapping, not how well COLMAP guessed a principal point. The parameters are COLMAP's,
in its order for the chosen model (``PINHOLE``: fx, fy, cx, cy), checked here so that a wrong count or a
non-number is a one-line error before any work, not a crash inside COLMAP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pycolmap

from d2sfm.errors import D2sfmError
from d2sfm.sfm.defaults import CAMERA_MODELS  # noqa: F401 (re-exported: where it was first defined)


@dataclass(frozen=True)
class IntrinsicsRefinement:
    """Which camera parameters bundle adjustment and pose estimation may change."""

    focal: bool
    principal_point: bool
    extra: bool  # distortion


INTRINSICS_REFINEMENT = {
    "colmap": IntrinsicsRefinement(focal=True, principal_point=False, extra=True),  # COLMAP's default
    "none": IntrinsicsRefinement(focal=False, principal_point=False, extra=False),  # known calibration
    "focal": IntrinsicsRefinement(focal=True, principal_point=False, extra=False),
    "all": IntrinsicsRefinement(focal=True, principal_point=True, extra=True),
}


def intrinsics_refinement(name: str) -> IntrinsicsRefinement:
    if name not in INTRINSICS_REFINEMENT:
        raise D2sfmError(f"--refine-intrinsics {name!r} is unknown; use one of {', '.join(INTRINSICS_REFINEMENT)}")
    return INTRINSICS_REFINEMENT[name]


def parameter_names(camera_model: str) -> list[str]:
    """COLMAP's parameter names of a camera model, in order (``PINHOLE``: fx, fy, cx, cy)."""
    if camera_model not in CAMERA_MODELS:
        raise D2sfmError(f"camera model {camera_model!r} is unknown; use one of {', '.join(CAMERA_MODELS)}")
    camera = pycolmap.Camera.create_from_model_name(1, camera_model, 1.0, 2, 2)
    return [name.strip() for name in camera.params_info.split(",")]


def parse_camera_params(camera_model: str, text: str) -> list[float]:
    """``"fx,fy,cx,cy"`` (any model's list) as numbers, checked against the model; "" gives []."""
    if not text.strip():
        return []
    names = parameter_names(camera_model)
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise D2sfmError(f"--camera-params {text!r}: not a comma-separated list of numbers; pass "
                         f"{','.join(names)} for {camera_model}") from None
    if len(values) != len(names):
        raise D2sfmError(f"--camera-params {text!r}: {camera_model} takes {len(names)} parameters "
                         f"({', '.join(names)}), {len(values)} given; pass them in that order or choose the model "
                         "with --camera-model")
    if not all(math.isfinite(value) for value in values):
        raise D2sfmError(f"--camera-params {text!r}: every parameter must be a finite number")
    focal = [value for name, value in zip(names, values) if name in ("f", "fx", "fy")]
    if any(value <= 0 for value in focal):
        raise D2sfmError(f"--camera-params {text!r}: the focal length must be positive (pixels)")
    return values


def apply_to_bundle_adjustment(options, refinement: IntrinsicsRefinement) -> None:
    """Set ``refine_focal_length``, ``refine_principal_point`` and ``refine_extra_params`` of COLMAP's
    bundle-adjustment options (pycolmap.BundleAdjustmentOptions or the global mapper's)."""
    options.refine_focal_length = refinement.focal
    options.refine_principal_point = refinement.principal_point
    options.refine_extra_params = refinement.extra


def apply_to_incremental(options: pycolmap.IncrementalPipelineOptions, refinement: IntrinsicsRefinement) -> None:
    """The incremental mapper's bundle adjustments and its absolute pose refinement (which COLMAP lets change the
    focal length and distortion, never the principal point)."""
    options.ba_refine_focal_length = refinement.focal
    options.ba_refine_principal_point = refinement.principal_point
    options.ba_refine_extra_params = refinement.extra
    options.mapper.abs_pose_refine_focal_length = refinement.focal
    options.mapper.abs_pose_refine_extra_params = refinement.extra
