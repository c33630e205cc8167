"""``localize images`` at full size on the shared Strecha scenes, with and without the query keypoints' refinement.

    python benchmarks/localize_strecha.py                 # the three scenes, CPU, single-scale
    python benchmarks/localize_strecha.py --scenes entry-P10 --work outputs/localize_strecha

Per scene, as tests/pipeline/test_localize_images.py does at 800 px: every other photo (0000, 0002, ...) is
reconstructed at its true pose with the known K (``reconstruct --known-poses``: triangulation, then the default
refinement of the keypoints and of the model), and the other photos are localized against that model with the
same K (``localize images --gt``), once with the query keypoints aligned to the reference observations (the
default) and once without (``--no-refine``; the extraction and matching are shared). Printed: the share of
queries within 1 cm/0.1 deg, 5 cm/0.5 deg and 10 cm/1 deg and the median position and rotation errors.
Everything is kept under ``--work`` and resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SHARED, WEIGHTS  # noqa: E402

SCENES = ("fountain-P11", "Herz-Jesus-P8", "entry-P10")


def split(images: Path, reference: Path, queries: Path) -> None:
    """Even-numbered photos into the reference, the others into the queries (symbolic links), once."""
    if (reference / "images").is_dir():
        return
    (reference / "images").mkdir(parents=True)
    queries.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(sorted(os.listdir(images))):
        target = reference / "images" / name if index % 2 == 0 else queries / name
        target.symlink_to(images / name)


def run_scene(root: Path, work: Path, weights: Path, device: str) -> list[dict]:
    import d2sfm
    from d2sfm.evaluation.ground_truth import read_truth, shared_pinhole

    truth = root / "gt_dense_cameras"
    known = shared_pinhole(read_truth(truth))
    reference, queries = work / "reference", work / "queries"
    split(root / "images", reference, queries)
    features = d2sfm.FeatureConfig(scales=(1.0,), weights=str(weights))
    run = d2sfm.RunConfig(device=device)
    cameras = d2sfm.MappingConfig(camera_mode="single", camera_model="PINHOLE", camera_params=known,
                                  refine_intrinsics="none", known_poses=str(truth))
    config = d2sfm.preset("d2-ss", run=run, mapping=cameras)
    d2sfm.reconstruct(reference, dataclasses.replace(config, features=features))
    rows = []
    for refine in (True, False):
        summary = d2sfm.localize_images(reference, queries, d2sfm.ImagesLocalizationConfig(
            camera_model="PINHOLE", camera_params=known, features=features, run=run, refine=refine),
            output=work / "localization", gt=truth)
        scores = summary["scores"]
        rows.append({"scene": root.name, "refined queries": refine,
                     "localized": f"{summary['localized']}/{summary['queries']}",
                     "recall_percent": scores["recall_percent"],
                     "median_position_error_m": scores["median_position_error_m"],
                     "median_rotation_error_deg": scores["median_rotation_error_deg"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "localize_strecha")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args()
    rows = []
    for scene in options.scenes:
        rows += run_scene(SHARED / "data" / "strecha" / scene, options.work / scene, options.weights, options.device)
    print("| scene | query keypoints | localized | 1 cm, 0.1 deg | 5 cm, 0.5 deg | 10 cm, 1 deg | median error |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        recall = " | ".join(f"{value:.0f}%" for value in row["recall_percent"])
        print(f"| {row['scene']} | {'refined' if row['refined queries'] else 'detected'} | {row['localized']} | "
              f"{recall} | {100 * row['median_position_error_m']:.1f} cm, {row['median_rotation_error_deg']:.2f} deg |")


if __name__ == "__main__":
    main()
