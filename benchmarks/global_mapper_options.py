"""Which options let pycolmap's global mapper keep D2 images: on the database of a ``d2sfm.reconstruct`` run whose
photos have known cameras, each option set maps the same database and is scored against the truth.

    python benchmarks/large_scene.py --counts 250 500 --compare-mappers     # leaves outputs/large_scene/scene_N
    python benchmarks/global_mapper_options.py outputs/large_scene/scene_250 \\
        --truth outputs/large_scene/render_500/ground_truth

The global mapper's defaults are COLMAP's, chosen for SIFT; the last row is what d2sfm runs where a camera has no
known focal length (``d2sfm.sfm.mapping.calibrated_view_graph``). It confirms no pose by 2D-3D RANSAC, so d2sfm drops an
image seen by fewer than 30 of its 3D points (``d2sfm.sfm.mapping.drop_weak_images``); the columns give the images
the mapper placed, those kept after that rule, the 3D points, the time and the camera errors of the kept images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pycolmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from d2sfm.evaluation.ground_truth import demo_check  # noqa: E402
from d2sfm.sfm.cameras import INTRINSICS_REFINEMENT, apply_to_bundle_adjustment  # noqa: E402
from d2sfm.sfm.mapping import GLOBAL_MIN_IMAGE_POINTS, calibrated_view_graph, drop_weak_images  # noqa: E402

# Each set changes GlobalMapperOptions fields (pycolmap.GlobalPipelineOptions().mapper) from COLMAP's defaults.
OPTION_SETS = {
    "COLMAP's defaults": {},
    "2-view tracks": {"track_min_num_views_per_track": 2},
    "reprojection gates x2": {"max_normalized_reproj_error": 0.02, "max_angular_reproj_error_deg": 2.0},
    "triangulation angle 0.5 deg": {"min_tri_angle_deg": 0.5},
    "2-view tracks, gates x2": {"track_min_num_views_per_track": 2, "max_normalized_reproj_error": 0.02,
                                "max_angular_reproj_error_deg": 2.0},
    # what d2sfm runs: COLMAP's options on a copy of the database whose view graph is calibrated first
    "view graph calibrated first (d2sfm)": {"calibrate": True},
}


def map_once(database: Path, images: Path, changes: dict, seed: int) -> tuple[pycolmap.Reconstruction | None, float]:
    """The best model of one global mapping run, and its time (the calibration's included)."""
    options = pycolmap.GlobalPipelineOptions()
    options.random_seed = seed
    for key, value in changes.items():
        if key != "calibrate":
            setattr(options.mapper, key, value)
    apply_to_bundle_adjustment(options.mapper.bundle_adjustment, INTRINSICS_REFINEMENT["colmap"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if changes.get("calibrate"):
            database = calibrated_view_graph(database, Path(scratch) / "calibrated", seed)
        models = pycolmap.global_mapping(database, images, Path(scratch) / "models", options)
    seconds = time.perf_counter() - start
    best = max(models.values(), key=lambda m: (m.num_reg_images(), m.num_points3D()), default=None)
    return best, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path, help="a d2sfm.reconstruct output folder (its database.db is read)")
    parser.add_argument("--truth", type=Path, required=True, help="the photos' true cameras (ground_truth/)")
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default scene/images)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL", help="run these option sets only")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    database = args.scene / "database.db"
    images = args.images or args.scene / "images"
    with pycolmap.Database.open(database) as db:
        total = db.num_images()
    print(f"{database}: {total} images, seeds 0-{args.seeds - 1}, pycolmap {pycolmap.__version__}\n")
    print("| global mapper options | seed | placed | kept (>= 30 points) | 3D points | mapping s | median / max "
          "rotation error (deg) | median / max position error (% of scene) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, changes in OPTION_SETS.items():
        if args.only and label not in args.only:
            continue
        for seed in range(args.seeds):
            model, seconds = map_once(database, images, changes, seed)
            if model is None:
                print(f"| {label} | {seed} | 0 | 0 | 0 | {seconds:.1f} | - | - |", flush=True)
                continue
            placed = model.num_reg_images()
            drop_weak_images(model, GLOBAL_MIN_IMAGE_POINTS)
            check = demo_check(model, args.truth)
            errors = ("-", "-") if not check["aligned"] else (
                f"{check['median_rotation_error_deg']:.3f} / {check['max_rotation_error_deg']:.3f}",
                f"{100 * check['median_position_error_rel']:.3f} / {100 * check['max_position_error_rel']:.3f}")
            print(f"| {label} | {seed} | {placed} | {model.num_reg_images()} | {model.num_points3D()} | "
                  f"{seconds:.1f} | {errors[0]} | {errors[1]} |", flush=True)


if __name__ == "__main__":
    main()
