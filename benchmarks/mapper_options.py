"""How often the incremental mapper puts every image in one model, with COLMAP's options and with d2sfm's, on the
database of a ``d2sfm.reconstruct`` run (the mapper is randomised: each option set is run with many seeds).

    python -m d2sfm.reconstruct outputs/sacre_coeur --images ../shared/data/sacre_coeur/images
    python benchmarks/mapper_options.py outputs/sacre_coeur --images ../shared/data/sacre_coeur/images --seeds 12
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pycolmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path, help="a d2sfm.reconstruct output folder (its database.db is read)")
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default scene/images)")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--rows", default="all", help="'all', or 'distortion': only the rows that show what holding "
                        "distortion while mapping changes (d2sfm's options with and without it, and the command)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from d2sfm.sfm.mapping import (
        D2_ABS_POSE_MIN_INLIER_RATIO,
        D2_ABS_POSE_MIN_INLIERS,
        D2_INIT_MIN_TRI_ANGLE,
        hold_distortion,
        run_mapping,
        verified_keypoints,
    )

    pycolmap.logging.minloglevel = 2
    registration = {"abs_pose_min_num_inliers": D2_ABS_POSE_MIN_INLIERS,
                    "abs_pose_min_inlier_ratio": D2_ABS_POSE_MIN_INLIER_RATIO}
    option_sets = {
        "COLMAP's defaults": {},
        "d2sfm's registration thresholds only": registration,
        "d2sfm's initial-pair angle only": {"init_min_tri_angle": D2_INIT_MIN_TRI_ANGLE},
        "d2sfm's (both)": {**registration, "init_min_tri_angle": D2_INIT_MIN_TRI_ANGLE},
        "d2sfm's, distortion held while mapping": {**registration, "init_min_tri_angle": D2_INIT_MIN_TRI_ANGLE,
                                                    "hold_distortion": True},
    }
    if args.rows == "distortion":
        option_sets = {label: option_sets[label] for label in list(option_sets)[-2:]}
    database = args.scene / "database.db"
    images = args.images or args.scene / "images"
    with pycolmap.Database.open(database) as db:
        total = db.num_images()
    verified = verified_keypoints(database)
    print(f"{database}: {total} images, seeds 0-{args.seeds - 1}, pycolmap {pycolmap.__version__}\n")
    print("Per seed: the images of each model, then the largest model's 3D points and the share of its images' "
          "verified keypoints that it triangulated.\n")
    print("| mapper options | seeds with all images in one model | models per seed |")
    print("| --- | ---: | --- |")
    for label, changes in option_sets.items():
        per_seed = []
        for seed in range(args.seeds):
            options = pycolmap.IncrementalPipelineOptions()
            options.random_seed = seed
            options.min_model_size = 3
            for key, value in changes.items():
                if key == "hold_distortion":
                    hold_distortion(options)  # (without run_mapping's final adjustment: as the mapper leaves it)
                else:
                    setattr(options.mapper, key, value)
            with tempfile.TemporaryDirectory() as scratch:
                models = pycolmap.incremental_mapping(database, images, scratch, options)
            per_seed.append(describe(sorted(models.values(), key=lambda m: m.num_reg_images(), reverse=True),
                                     verified))
        report(label, per_seed, total, args.seeds)
    per_seed = []
    for seed in range(args.seeds):  # what d2sfm.reconstruct runs: d2sfm's options and a retry when incomplete
        with tempfile.TemporaryDirectory() as scratch:
            models = run_mapping(database, images, Path(scratch) / "sparse", seed=seed, progress=False)
        per_seed.append(describe(models, verified))
    report("d2sfm.reconstruct (d2sfm's, distortion held while mapping, retried under 90% of the images or 15% "
           "triangulated, or leaving out a well-linked image)", per_seed, total,
           args.seeds)


def describe(models: list, verified: dict) -> tuple[list[int], int, float]:
    """(images of each model, largest first; 3D points and triangulated share of the largest)."""
    from d2sfm.sfm.mapping import triangulated_share

    if not models:
        return [], 0, 0.0
    return [m.num_reg_images() for m in models], models[0].num_points3D(), triangulated_share(models[0], verified)


def report(label: str, per_seed: list, total: int, seeds: int) -> None:
    complete = sum(1 for sizes, _, _ in per_seed if sizes and sizes[0] == total)
    cells = "; ".join(f"{sizes} {points} pts {100 * share:.0f}%" for sizes, points, share in per_seed)
    print(f"| {label} | {complete} of {seeds} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
