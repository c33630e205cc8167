"""How right a model's cameras are, against ground-truth cameras (not how self-consistent: reprojection error and
track length say that).

The truth is a folder of Strecha ``NAME.camera`` files (Strecha et al., CVPR 2008; ``../shared/README.md``) or a
COLMAP model, the format ETH3D and other benchmarks give theirs in. Two scores:

- **Absolute**, after alignment: the model's camera centres are mapped onto the true ones by a similarity found by
  LO-RANSAC over the centres (``pycolmap.estimate_sim3d_robust``), then refitted by least squares on its inliers
  (``pycolmap.estimate_sim3d``), so one wrong camera cannot drag the others and hide their accuracy. Per camera:
  rotation error (degrees) and position error, in the truth's units and as a share of the scene's extent (the
  radius of the true camera centres around their mean).
- **Relative**, with no alignment: for every pair of true images, the larger of the relative rotation's error
  and the angle between the estimated and true translation directions; a pair with an image the model left out
  counts as failed. Its area under the recall curve up to 1, 3, 5 and 10 degrees (the AUC of SuperGlue and LoFTR's
  pose benchmarks) summarises the whole distribution.

Written by hand (pycolmap has neither): the Strecha reader, the per-camera errors and the AUC.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from d2sfm.errors import D2sfmError
from d2sfm.io.model_files import read_model
from d2sfm.sfm.angles import direction_angle_deg, nearest_rotation, rotation_angle_deg

AUC_THRESHOLDS_DEG = (1.0, 3.0, 5.0, 10.0)
DEFAULT_INLIER_SHARE = 0.05  # alignment inlier threshold, as a share of the scene's extent
STRECHA_SUFFIX = ".camera"


@dataclass(frozen=True)
class TruthCamera:
    """One true camera: intrinsics K (3 x 3), pose as camera-from-world rotation and centre in world units."""

    name: str
    K: np.ndarray
    rotation: np.ndarray  # camera from world
    centre: np.ndarray
    width: int
    height: int


def read_strecha_camera(path: Path) -> TruthCamera:
    """``NAME.jpg.camera``: K (3 rows), distortion (1 row), R (3 rows, camera to world), C (1 row), width height."""
    try:
        rows = [[float(value) for value in line.split()] for line in path.read_text().splitlines() if line.strip()]
        K, camera_to_world, centre = np.array(rows[0:3]), np.array(rows[4:7]), np.array(rows[7])
        width, height = int(rows[8][0]), int(rows[8][1])
        if K.shape != (3, 3) or camera_to_world.shape != (3, 3) or centre.shape != (3,):
            raise ValueError("wrong shape")
    except (ValueError, IndexError, OSError) as error:
        raise D2sfmError(f"{path}: not a Strecha camera file ({error}): K, distortion, R, C and 'width height' "
                         "rows are expected") from None
    # the rows carry 6 significant digits: the nearest rotation, so that no error is scored from the rounding
    return TruthCamera(path.name[:-len(STRECHA_SUFFIX)], K, nearest_rotation(camera_to_world.T), centre, width, height)


def read_truth(path: str | os.PathLike) -> dict[str, TruthCamera]:
    """The true cameras by image name, from a folder of Strecha ``.camera`` files or a COLMAP model (only its
    posed images)."""
    path = Path(path)
    if not path.is_dir():
        raise D2sfmError(f"{path}: no such ground-truth folder; give a folder of Strecha .camera files or a COLMAP "
                         "model (cameras, images, points3D)")
    strecha = sorted(path.glob(f"*{STRECHA_SUFFIX}"))
    if strecha:
        return {camera.name: camera for camera in map(read_strecha_camera, strecha)}
    model = read_model(path)
    truth = {}
    for image in model.images.values():
        if image.has_pose:
            camera = model.cameras[image.camera_id]
            pose = image.cam_from_world()
            truth[image.name] = TruthCamera(image.name, camera.calibration_matrix(), pose.rotation.matrix(),
                                            image.projection_center(), camera.width, camera.height)
    if not truth:
        raise D2sfmError(f"{path}: the model has no posed image to compare with")
    return truth


def shared_pinhole(truth: dict[str, TruthCamera]) -> str | None:
    """"fx,fy,cx,cy" when every true camera has the same pinhole K (the known calibration a benchmark gives the
    pipeline), else None."""
    matrices = [camera.K for camera in truth.values()]
    if not matrices or any(not np.allclose(K, matrices[0]) for K in matrices):
        return None
    K = matrices[0]
    if abs(K[0, 1]) > 1e-9:
        return None
    return ",".join(f"{value:.10g}" for value in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))


@dataclass(frozen=True)
class EstimatedCamera:
    rotation: np.ndarray  # camera from world
    centre: np.ndarray


def model_cameras(model: pycolmap.Reconstruction) -> dict[str, EstimatedCamera]:
    return {image.name: EstimatedCamera(image.cam_from_world().rotation.matrix(), image.projection_center())
            for image in model.images.values() if image.has_pose}


def scene_extent(truth: dict[str, TruthCamera]) -> float:
    centres = np.array([camera.centre for camera in truth.values()])
    return float(np.linalg.norm(centres - centres.mean(0), axis=1).max())


@dataclass
class CameraError:
    name: str
    registered: bool
    alignment_inlier: bool = False
    rotation_error_deg: float | None = None
    position_error: float | None = None  # in the truth's units
    position_error_share: float | None = None  # of the scene's extent


@dataclass
class GroundTruthScore:
    """Per-camera errors after a robust alignment, and the relative-pose AUC (no alignment)."""

    total: int
    registered: int
    aligned: bool
    alignment_inliers: int
    extent: float
    cameras: list[CameraError]
    auc: dict[str, float]  # "1", "3", "5", "10" (degrees) -> AUC in [0, 1]
    pairs: int
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def align(estimated: dict[str, EstimatedCamera], truth: dict[str, TruthCamera],
          threshold: float) -> tuple[pycolmap.Sim3d | None, list[str]]:
    """The similarity truth-from-model over the common camera centres (LO-RANSAC, then least squares on its
    inliers) and the names of its inliers; None with fewer than 3 common cameras or no consensus."""
    names = sorted(set(estimated) & set(truth))
    if len(names) < 3:
        return None, []
    source = np.array([estimated[name].centre for name in names])
    target = np.array([truth[name].centre for name in names])
    options = pycolmap.RANSACOptions()
    options.max_error = threshold
    options.random_seed = 0  # the same alignment, hence the same scores, however many ran before in the process
    robust = pycolmap.estimate_sim3d_robust(source, target, options)
    if robust is None:
        return None, []
    inliers = np.asarray(robust["inlier_mask"], dtype=bool)
    if inliers.sum() < 3:
        return None, []
    refined = pycolmap.estimate_sim3d(source[inliers], target[inliers])
    similarity = refined if refined is not None else robust["tgt_from_src"]
    return similarity, [name for name, inlier in zip(names, inliers) if inlier]


def relative_pose_errors(estimated: dict[str, EstimatedCamera], truth: dict[str, TruthCamera]) -> list[float]:
    """For every pair of true images: max(relative rotation error, translation direction error) in degrees,
    inf where either image was not registered."""
    errors = []
    for first, second in itertools.combinations(sorted(truth), 2):
        if first not in estimated or second not in estimated:
            errors.append(math.inf)
            continue
        errors.append(max(_relative_errors(estimated[first], estimated[second], truth[first], truth[second])))
    return errors


def _relative_errors(e1: EstimatedCamera, e2: EstimatedCamera, t1: TruthCamera, t2: TruthCamera
                     ) -> tuple[float, float]:
    def second_from_first(rotation1, centre1, rotation2, centre2):
        rotation = rotation2 @ rotation1.T
        return rotation, rotation2 @ (centre1 - centre2)  # the translation of x2 = R x1 + t

    estimated_rotation, estimated_translation = second_from_first(e1.rotation, e1.centre, e2.rotation, e2.centre)
    true_rotation, true_translation = second_from_first(t1.rotation, t1.centre, t2.rotation, t2.centre)
    return (rotation_angle_deg(estimated_rotation @ true_rotation.T),
            direction_angle_deg(estimated_translation, true_translation))


def pose_auc(errors: list[float], thresholds: tuple[float, ...] = AUC_THRESHOLDS_DEG) -> dict[str, float]:
    """Area under the recall-versus-error curve up to each threshold, normalised to [0, 1]: 1 when every error
    is 0, 0 when none is below the threshold."""
    if not errors:
        return {f"{threshold:g}": 0.0 for threshold in thresholds}
    ordered = np.sort(np.asarray(errors, dtype=np.float64))
    recall = np.arange(1, len(ordered) + 1) / len(ordered)
    ordered = np.concatenate([[0.0], ordered])
    recall = np.concatenate([[0.0], recall])
    result = {}
    for threshold in thresholds:
        last = int(np.searchsorted(ordered, threshold))  # errors strictly below the threshold: ordered[:last]
        x = np.concatenate([ordered[:last], [threshold]])
        y = np.concatenate([recall[:last], [recall[last - 1]]])
        result[f"{threshold:g}"] = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / threshold)
    return result


def score_cameras(estimated: dict[str, EstimatedCamera], truth: dict[str, TruthCamera],
                  inlier_share: float = DEFAULT_INLIER_SHARE) -> GroundTruthScore:
    """Every true camera scored (see the module's docstring); ``inlier_share``: the alignment's inlier threshold
    as a share of the scene's extent."""
    if len(truth) < 2:
        raise D2sfmError(f"the ground truth has {len(truth)} camera(s); scoring needs at least two")
    extent = scene_extent(truth)
    similarity, inliers = align(estimated, truth, inlier_share * extent)
    cameras = []
    for name in sorted(truth):
        if name not in estimated:
            cameras.append(CameraError(name, registered=False))
            continue
        error = CameraError(name, registered=True, alignment_inlier=name in inliers)
        if similarity is not None:
            centre = similarity * estimated[name].centre
            # the aligned camera's rotation (camera from world) is R_est R_sim^T
            rotation = estimated[name].rotation @ similarity.rotation.matrix().T
            error.rotation_error_deg = rotation_angle_deg(rotation @ truth[name].rotation.T)
            error.position_error = float(np.linalg.norm(centre - truth[name].centre))
            error.position_error_share = error.position_error / extent if extent > 0 else None
        cameras.append(error)
    errors = relative_pose_errors(estimated, truth)
    score = GroundTruthScore(total=len(truth), registered=sum(c.registered for c in cameras),
                             aligned=similarity is not None, alignment_inliers=len(inliers), extent=extent,
                             cameras=cameras, auc=pose_auc(errors), pairs=len(errors))
    score.summary = summarise(score)
    return score


def score_model(model: pycolmap.Reconstruction, truth: dict[str, TruthCamera],
                inlier_share: float = DEFAULT_INLIER_SHARE) -> GroundTruthScore:
    return score_cameras(model_cameras(model), truth, inlier_share)


def summarise(score: GroundTruthScore) -> dict:
    scored = [camera for camera in score.cameras if camera.rotation_error_deg is not None]

    def stat(key: str, how) -> float | None:
        values = [getattr(camera, key) for camera in scored]
        return float(how(values)) if values else None

    return {"registered": f"{score.registered}/{score.total}", "alignment_inliers": score.alignment_inliers,
            "median_rotation_error_deg": stat("rotation_error_deg", np.median),
            "max_rotation_error_deg": stat("rotation_error_deg", max),
            "median_position_error": stat("position_error", np.median),
            "max_position_error": stat("position_error", max),
            "median_position_error_share": stat("position_error_share", np.median),
            "max_position_error_share": stat("position_error_share", max),
            **{f"auc@{key}deg": value for key, value in score.auc.items()}}


def format_score(score: GroundTruthScore, unit: str = "") -> str:
    """A per-camera table and the summary, for the console."""
    def number(value, pattern):
        return "-" if value is None else pattern.format(value)

    lines = [f"{'image':<24} {'rot. err. deg':>13} {'pos. err.' + (' ' + unit if unit else ''):>14} "
             f"{'% of extent':>11}  inlier"]
    for camera in score.cameras:
        if not camera.registered:
            lines.append(f"{camera.name:<24} {'not registered':>13}")
            continue
        share = None if camera.position_error_share is None else 100 * camera.position_error_share
        lines.append(f"{camera.name:<24} {number(camera.rotation_error_deg, '{:.3f}'):>13} "
                     f"{number(camera.position_error, '{:.4g}'):>14} {number(share, '{:.3f}'):>11}  "
                     f"{'yes' if camera.alignment_inlier else 'no'}")
    s = score.summary
    lines.append(f"registered {s['registered']}, aligned on {score.alignment_inliers} inlier camera(s); "
                 f"rotation error median {number(s['median_rotation_error_deg'], '{:.3f}')} / max "
                 f"{number(s['max_rotation_error_deg'], '{:.3f}')} deg; position error median "
                 f"{number(s['median_position_error'], '{:.4g}')} / max {number(s['max_position_error'], '{:.4g}')}"
                 f"{(' ' + unit) if unit else ''} (extent {score.extent:.4g})")
    lines.append("relative pose AUC over " + f"{score.pairs} pairs: " + ", ".join(
        f"@{key} deg {100 * value:.1f}" for key, value in score.auc.items()))
    return "\n".join(lines)


def demo_check(model: pycolmap.Reconstruction, truth_dir: str | os.PathLike) -> dict:
    """The demo's check of the recovered cameras against the rendered truth (stats.json's ``demo_check``)."""
    score = score_model(model, read_truth(truth_dir))
    if not score.aligned:
        return {"registered": score.registered, "aligned": False}
    s = score.summary
    return {"registered": score.registered, "aligned": True,
            "max_rotation_error_deg": s["max_rotation_error_deg"],
            "median_rotation_error_deg": s["median_rotation_error_deg"],
            "max_position_error_rel": s["max_position_error_share"],
            "median_position_error_rel": s["median_position_error_share"]}
