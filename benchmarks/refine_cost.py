"""Keypoint refinement's cost against photo size, and where its time goes: the baseline (every blur level at full
size with 21x21 samples, every keypoint through every iteration and level: ``AlignmentSettings(pyramid=False,
converged_px=None, min_coarse_correlation=None)``, and both blur levels in the model stage too: the refinement
before issue 36) and d2sfm's default, side by side on the same tracks.

    python benchmarks/refine_cost.py                     # Herz-Jesus-P8 (3072x2048), CPU
    python benchmarks/refine_cost.py --scene ../shared/data/strecha/fountain-P11 --sizes 1024 full

The scene is reconstructed once at full size without refinement (single-scale, one camera with the scene's
known K held, as ``reconstruct --single-scale --camera-mode single --camera-model PINHOLE --camera-params ...
--refine-intrinsics none --no-refine``; kept in ``--work`` and resumed). For every size (longest edge in px, or
``full``) the photos are resized (``cv2.INTER_AREA``) and the verified database's keypoints and the model's
cameras and 2D points scaled by the same factors, so every size refines the same tracks. Then the two stages run:
the database refinement (``refine_keypoints``) and the model refinement (``refine_model``, ending with a bundle
adjustment) of the model mapped from the unrefined keypoints (in a default run the model is mapped from the
refined ones, whose observations start closer to their optimum: this stage's figures are an upper bound). Each
runs under cProfile, which splits its time into decoding the photos, blurring (the stacks and the pyramid's
halvings), patch sampling (every bilinear sample: templates and fits), alignment (the Gauss-Newton fits without
their sampling) and bundle adjustment. Printed: per size, method and stage the keypoints aligned, seconds,
microseconds per keypoint and the split; the baseline/ours ratio; and the refinement's share of the full-size
single-scale extraction time of the same scene folder.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SHARED, WEIGHTS  # noqa: E402

HERZ_JESUS = SHARED / "data" / "strecha" / "Herz-Jesus-P8"
PARTS = ("decoding", "blurring", "sampling", "alignment", "bundle adjustment", "other")


def reconstruct_unrefined(scene: Path, work: Path, weights: Path) -> dict:
    """A full-size single-scale run without refinement (resumed when ``work`` holds it); its stats.json."""
    import d2sfm
    from d2sfm.evaluation.ground_truth import read_truth, shared_pinhole

    config = d2sfm.preset("d2-ss-unrefined")
    known = shared_pinhole(read_truth(scene / "gt_dense_cameras"))
    mapping = dataclasses.replace(config.mapping, camera_mode="single", camera_model="PINHOLE" if known else
                                  "SIMPLE_RADIAL", camera_params=known or "",
                                  refine_intrinsics="none" if known else "colmap")
    config = dataclasses.replace(config, features=dataclasses.replace(config.features, weights=str(weights)),
                                 mapping=mapping)
    result = d2sfm.reconstruct(work, config, images=scene / "images")
    return result.statistics


def scaled_inputs(names: dict[int, str], keypoints: dict[int, np.ndarray], model, images: Path, edge: int | None,
                  folder: Path) -> tuple[dict[int, np.ndarray], object, Path]:
    """Keypoints, model and photo folder at longest edge ``edge`` (None: as they are)."""
    import pycolmap

    if edge is None:
        return keypoints, model, images
    scaled_keypoints = {}
    model = pycolmap.Reconstruction(model)
    for image_id, name in names.items():
        photo = cv2.imread(str(images / name), cv2.IMREAD_COLOR)
        height, width = photo.shape[:2]
        factor = edge / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        cv2.imwrite(str(folder / name), cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
        scale = np.array([size[0] / width, size[1] / height])
        scaled_keypoints[image_id] = keypoints[image_id].copy()
        scaled_keypoints[image_id][:, :2] *= scale
        if image_id in model.images:
            image = model.images[image_id]
            for point in image.points2D:
                point.xy = point.xy * scale
    for camera in model.cameras.values():
        camera.rescale(max(1, round(camera.width * edge / max(camera.width, camera.height))),
                       max(1, round(camera.height * edge / max(camera.width, camera.height))))
    return scaled_keypoints, model, folder


def split(profile: cProfile.Profile, total: float) -> dict[str, float]:
    """Seconds of ``total`` by part, from the profile's cumulative times of the functions that do each."""
    stats = pstats.Stats(profile).stats

    def cumulative(filename: str, function: str, callers: tuple[str, ...] = ()) -> float:
        seconds = 0.0
        for (path, _, name), (_, _, _, own, by_caller) in stats.items():
            if path.endswith(filename) and name == function:
                if callers:
                    seconds += sum(entry[3] for (_, _, caller), entry in by_caller.items() if caller in callers)
                else:
                    seconds += own
        return seconds

    decoding = cumulative("io/images.py", "read")
    blurring = cumulative("patch_sampling.py", "fill_stack") + cumulative("patch_sampling.py", "pyr_down",
                                                                          ("__call__",))
    sampling = cumulative("patch_sampling.py", "sample")
    fitting = cumulative("patch_alignment.py", "_gauss_newton") - cumulative("patch_sampling.py", "sample",
                                                                            ("evaluate",))
    adjustment = cumulative("sfm/mapping.py", "bundle_adjust")
    parts = dict(zip(PARTS[:-1], (decoding, blurring, sampling, fitting, adjustment)))
    parts["other"] = max(total - sum(parts.values()), 0.0)
    return {part: round(seconds, 2) for part, seconds in parts.items()}


def run_stage(function, *args, **kwargs):
    """(result, seconds, split) of one refinement stage under cProfile."""
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    result = function(*args, **kwargs)
    profile.disable()
    seconds = time.perf_counter() - started
    return result, round(seconds, 2), split(profile, seconds)


def measure(work: Path, images: Path, edges: list[int | None], device: torch.device) -> list[dict]:
    from d2sfm.io.images import gray_image_reader
    from d2sfm.io.model_files import read_model
    from d2sfm.refinement.database_refinement import RefineSettings, read_database_keypoints, refine_keypoints
    from d2sfm.refinement.model_refinement import ModelRefineSettings, refine_model
    from d2sfm.refinement.tracks import read_verified_matches

    names, keypoints = read_database_keypoints(work / "database.db")
    matches = read_verified_matches(work / "database.db")
    model = read_model(work / "sparse" / "0")
    baseline = {"pyramid": False, "converged_px": None, "min_coarse_correlation": None, "blur_sigmas": (2.0, 1.0)}
    methods = {"baseline": baseline, "d2sfm": {}}
    rows = []
    for edge in edges:
        with tempfile.TemporaryDirectory() as scratch:
            sized_keypoints, sized_model, folder = scaled_inputs(names, keypoints, model, images, edge, Path(scratch))
            width = max(next(iter(sized_model.cameras.values())).width, next(iter(sized_model.cameras.values())).height)
            model_names = {image_id: image.name for image_id, image in sized_model.images.items()}
            for method, changes in methods.items():
                database_settings, model_settings = RefineSettings(), ModelRefineSettings()
                for settings in (database_settings.alignment, model_settings.alignment):
                    for key, value in changes.items():
                        setattr(settings, key, value)
                (_, summary), seconds, parts = run_stage(
                    refine_keypoints, sized_keypoints, names, matches, folder, None, device, database_settings,
                    progress=False)
                aligned = summary.keypoints_in_tracks - summary.tracks
                rows.append({"edge": width, "method": method, "stage": "database", "keypoints": aligned,
                             "seconds": seconds, **parts})
                (_, model_summary), seconds, parts = run_stage(
                    refine_model, sized_model, gray_image_reader(model_names, folder), device, model_settings)
                aligned = model_summary.observations_aligned + model_summary.observations_dropped
                rows.append({"edge": width, "method": method, "stage": "model", "keypoints": aligned,
                             "seconds": seconds, **parts,
                             "reprojection_error_after": model_summary.reprojection_error_after})
                print(f"{width} px {method}: database {rows[-2]['seconds']} s, model {rows[-1]['seconds']} s",
                      file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], extraction_seconds: float) -> str:
    lines = ["| longest edge px | method | stage | keypoints | seconds | us/keypoint | "
             + " | ".join(PARTS) + " |", "|---" * (6 + len(PARTS)) + "|"]
    for row in rows:
        per_keypoint = 1e6 * row["seconds"] / max(row["keypoints"], 1)
        lines.append(f"| {row['edge']} | {row['method']} | {row['stage']} | {row['keypoints']:,} | "
                     f"{row['seconds']:.1f} | {per_keypoint:.0f} | " + " | ".join(f"{row[part]:.1f}" for part in PARTS)
                     + " |")
    lines += ["", "| longest edge px | baseline s | d2sfm s | baseline / d2sfm | d2sfm / full-size SS extraction |",
              "|---|---|---|---|---|"]
    for edge in dict.fromkeys(row["edge"] for row in rows):
        total = {method: sum(row["seconds"] for row in rows if row["edge"] == edge and row["method"] == method)
                 for method in ("baseline", "d2sfm")}
        lines.append(f"| {edge} | {total['baseline']:.1f} | {total['d2sfm']:.1f} | "
                     f"{total['baseline'] / max(total['d2sfm'], 1e-9):.2f}x | "
                     f"{100 * total['d2sfm'] / extraction_seconds:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", type=Path, default=HERZ_JESUS,
                        help="a Strecha scene folder (images/ and gt_dense_cameras/)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the unrefined full-size run is kept (default: outputs/refine_cost/SCENE)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--sizes", nargs="+", default=["640", "1024", "1600", "2048", "full"],
                        help="longest edges in px, or 'full'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args()
    work = options.work or REPO / "outputs" / "refine_cost" / options.scene.name
    statistics = reconstruct_unrefined(options.scene, work, options.weights)
    extraction = statistics["stage_seconds"]["extract"]
    edges = [None if size == "full" else int(size) for size in options.sizes]
    rows = measure(work, options.scene / "images", edges, torch.device(options.device))
    print(f"{options.scene.name}, {options.device}, {torch.get_num_threads()} threads; single-scale extraction "
          f"of the full-size photos {extraction:.1f} s (the run that made the kept scene folder, --work)\n")
    print(table(rows, extraction))
    if options.json:
        options.json.write_text(json.dumps({"scene": options.scene.name, "extraction_seconds": extraction,
                                            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
