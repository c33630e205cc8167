"""Accuracy against ground-truth cameras, several pipelines side by side (``python -m d2sfm.evaluate gt --compare``).

On one scene with true cameras (a folder of Strecha ``.camera`` files or a COLMAP model): d2sfm single- and
multi-scale, refined and not, and COLMAP's own SIFT pipeline (pycolmap's defaults and mapper options), each in its
folder under the output, each scored by :mod:`d2sfm.evaluation.ground_truth` (robust alignment, per-camera rotation
and position errors, relative-pose AUC). When every true camera shares one pinhole K, as in the standard protocol
of the Strecha scenes, every method is given it (``PINHOLE``, one camera, intrinsics held); ``--guess-intrinsics``
(``known_intrinsics=False`` in Python) makes every method guess them as COLMAP does. Each method is a stage of
the output folder's record, skipped once finished with the same settings; a D2 run resumes inside its own folder
too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from d2sfm.api import reconstruct
from d2sfm.config import MappingConfig, RunConfig, preset
from d2sfm.errors import D2sfmError
from d2sfm.evaluation.ground_truth import (
    DEFAULT_INLIER_SHARE,
    format_score,
    model_cameras,
    read_truth,
    relative_pose_errors,
    scene_extent,
    score_model,
    shared_pinhole,
)
from d2sfm.evaluation.plots import PLOTS_HINT, plot_error_curves
from d2sfm.evaluation.sift_baseline import sift_reconstruction
from d2sfm.io.atomic import write_text_atomic
from d2sfm.io.images import list_images
from d2sfm.pipeline.stages import RunFolder
from d2sfm.sfm.mapping import model_statistics, read_models

log = logging.getLogger("d2sfm")

METHODS = {"d2-ss": "d2sfm SS", "d2-ss-unrefined": "d2sfm SS unrefined", "d2-ms": "d2sfm MS",
           "d2-ms-unrefined": "d2sfm MS unrefined", "sift": "COLMAP SIFT"}


@dataclass(frozen=True)
class GroundTruthOptions:
    """What ``python -m d2sfm.evaluate gt --compare`` can be told (its options say the same)."""

    images: Path  # the scene's photos
    gt: Path  # true cameras: Strecha .camera files or a COLMAP model
    output: Path  # one folder per method, and gt_compare.{json,md,png}
    methods: tuple[str, ...] = tuple(METHODS)  # any of METHODS
    known_intrinsics: bool = True  # give every method the true K when all true cameras share one
    camera_mode: str = "single"  # without the known K: COLMAP's camera mode for every method
    weights: str | None = None  # D2 weights: a .pth path or an official name
    conv: str = "exact"  # D2 backbone convolutions on the CPU
    device: str = "auto"  # D2 extraction and matching device
    seed: int = 0  # SIFT's mapper seed
    inlier_share: float = DEFAULT_INLIER_SHARE  # alignment inlier threshold, share of the scene's extent
    plots: bool = True  # write gt_compare.png
    progress: bool = True  # progress bars


def camera_settings(options: GroundTruthOptions, truth: dict) -> dict:
    """The cameras every method starts from: the shared true K held fixed, or COLMAP's guess."""
    params = shared_pinhole(truth) if options.known_intrinsics else None
    if params:
        return {"camera_mode": "single", "camera_model": "PINHOLE", "camera_params": params,
                "refine_intrinsics": "none"}
    return {"camera_mode": options.camera_mode, "camera_model": "SIMPLE_RADIAL", "camera_params": "",
            "refine_intrinsics": "colmap"}


def run_d2(kind: str, images: Path, folder: Path, cameras: dict, options: GroundTruthOptions) -> float:
    """One d2sfm run; an unrefined one reads the features of its refined sibling when that run has finished
    (the same extraction: only refinement differs), and its time then counts that extraction's."""
    config = preset(kind, run=RunConfig(device=options.device, progress=options.progress),
                    mapping=MappingConfig(**cameras))
    config = dataclasses.replace(config, features=dataclasses.replace(config.features, weights=options.weights,
                                                                      conv=options.conv))
    sibling = folder.parent / kind.removesuffix("-unrefined")
    shared = kind.endswith("-unrefined") and (sibling / "sparse" / "0").is_dir()
    features = sibling / "features.h5" if shared else None
    statistics = reconstruct(folder, config, images=images, features=features).statistics
    seconds = sum(statistics["stage_seconds"].values())
    if shared:
        seconds += json.loads((sibling / "stats.json").read_text())["stage_seconds"]["extract"]
    return round(seconds, 1)


def run_sift(images: Path, names: list[str], folder: Path, cameras: dict, options: GroundTruthOptions) -> float:
    shutil.rmtree(folder, ignore_errors=True)  # a killed or other-settings run: SIFT's database is not resumable
    start = time.perf_counter()
    sift_reconstruction(images, names, folder, seed=options.seed, progress=options.progress, **cameras)
    return round(time.perf_counter() - start, 1)


def run(options: GroundTruthOptions) -> dict:
    """Every method reconstructed and scored; writes gt_compare.json, gt_compare.md (the table) and gt_compare.png
    (the relative-pose error curves) under ``options.output`` and returns the report."""
    unknown = sorted(set(options.methods) - set(METHODS))
    if unknown:
        raise D2sfmError(f"unknown method(s) {', '.join(unknown)}; use any of {', '.join(METHODS)}")
    if not options.images.is_dir():
        raise D2sfmError(f"{options.images}: no such image folder; pass the scene's photos with --images")
    truth = read_truth(options.gt)
    names = [name for name in list_images(options.images) if name in truth]
    if len(names) < 3:
        raise D2sfmError(f"{options.images}: {len(names)} photo(s) named as in {options.gt}; the comparison needs "
                         "at least three photos with true cameras")
    cameras = camera_settings(options, truth)
    log.info(f"{len(names)} photos with true cameras; "
             + (f"known K {cameras['camera_params']} given to every method" if cameras["camera_params"]
                else "intrinsics guessed by each method"))
    folder = RunFolder(options.output)
    runs = folder.state.setdefault("runs", {})
    rows, curves = {}, {}
    for kind in sorted(options.methods, key=list(METHODS).index):  # a refined run before its unrefined twin
        label, work = METHODS[kind], options.output / kind
        settings = {"cameras": cameras, "names": names, "weights": options.weights, "conv": options.conv,
                    "seed": options.seed}
        if kind.removesuffix("-unrefined") in runs and kind.endswith("-unrefined"):  # reads its sibling's features
            settings["features_of"] = runs[kind.removesuffix("-unrefined")]["settings"]
        done = runs.get(kind, {}).get("settings") == settings and (work / "sparse" / "0").is_dir()

        def reconstruct_with(kind=kind, work=work, settings=settings) -> None:
            seconds = (run_sift(options.images, names, work, cameras, options) if kind == "sift"
                       else run_d2(kind, options.images, work, cameras, options))
            runs[kind] = {"settings": settings, "seconds": seconds}

        log.info(f"== {label} in {work}")
        folder.stages.run(f"reconstruct {kind}", done, reconstruct_with)
        models = read_models(work / "sparse")
        if not models:
            rows[label] = {"registered": f"0/{len(truth)}", "seconds": runs[kind]["seconds"]}
            continue
        score = score_model(models[0], truth, options.inlier_share)
        log.info(format_score(score))
        rows[label] = {**score.summary, **{key: model_statistics(models[0])[key] for key in (
            "points3D", "mean_track_length", "mean_reprojection_error")}, "seconds": runs[kind]["seconds"]}
        curves[label] = relative_pose_errors(model_cameras(models[0]), truth)
    report = {"images": str(options.images), "gt": str(options.gt), "cameras": cameras, "extent": scene_extent(truth),
              "methods": rows}
    write_text_atomic(options.output / "gt_compare.json", json.dumps(report, indent=2))
    table = format_table(rows)
    write_text_atomic(options.output / "gt_compare.md", table + "\n")
    log.info(table)
    log.info(f"wrote {options.output / 'gt_compare.json'} and gt_compare.md")
    if options.plots:
        if plot_error_curves(curves, options.output / "gt_compare.png", title=options.images.parent.name):
            log.info(f"wrote {options.output / 'gt_compare.png'}")
        else:
            log.info(PLOTS_HINT)
    return report


COLUMNS = [("registered", "reg.", "{}"), ("points3D", "points", "{:,}"), ("mean_track_length", "track", "{:.2f}"),
           ("mean_reprojection_error", "reproj. px", "{:.2f}"),
           ("median_rotation_error_deg", "rot. err. median deg", "{:.3f}"),
           ("median_position_error", "pos. err. median", "{:.4f}"), ("max_position_error", "pos. err. max", "{:.4f}"),
           ("auc@1deg", "AUC@1", "{:.3f}"), ("auc@3deg", "AUC@3", "{:.3f}"), ("auc@5deg", "AUC@5", "{:.3f}"),
           ("auc@10deg", "AUC@10", "{:.3f}"), ("seconds", "whole run s", "{:.0f}")]


def format_table(rows: dict[str, dict]) -> str:
    """The Markdown table of docs/benchmarks.md: one row per method (position errors in the truth's units)."""
    lines = ["| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for label, row in rows.items():
        cells = ["-" if row.get(key) is None else form.format(row[key]) for key, _, form in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
