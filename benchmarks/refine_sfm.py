"""Featuremetric keypoint refinement on real photos: d2sfm single- and multi-scale with and without refinement
(dense features from conv1_2 or conv2_2), beside pycolmap's SIFT, in one run.

    python benchmarks/refine_sfm.py                      # ../shared/data/sacre_coeur, HED weights, CPU
    python benchmarks/refine_sfm.py --device cuda        # refinement cost against extraction on a GPU

Each D2 variant is extracted, matched (exhaustive pairs, mutual nearest neighbours) and verified once; the
refined databases are copies of that verified database whose keypoints ``d2sfm.refine`` moved, so the rows of
one variant differ only in the keypoints. Every database is mapped as ``d2sfm.reconstruct`` maps (d2sfm's mapper
options, one retry) with seeds 0, 1, 2; "registered" is the largest model of each seed, the other statistics
the median over the seeds of the largest model's (one seed's model can be a thin one). SIFT is mapped with
COLMAP's own mapper options (as in sfm_vs_sift.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sfm_vs_sift import SHARED, d2sfm_features, sift_reconstruction, summarise  # noqa: E402

LAYERS = ("conv1_2", "conv2_2")


def verified_database(images: Path, names, features: Path, work: Path) -> tuple[Path, str, float]:
    from d2sfm.database import create_database, import_features_and_matches, verify_pairs
    from d2sfm.match import match_pairs
    from d2sfm.pairs import exhaustive_pairs, write_pairs

    pairs = exhaustive_pairs(names)
    write_pairs(work / "pairs.txt", pairs)
    start = time.perf_counter()
    match_pairs(features, pairs, work / "matches.h5", progress=False)
    database = work / "raw.db"
    ids = create_database(database, images, names)
    import_features_and_matches(database, ids, features, work / "matches.h5", pairs, progress=False)
    verification = verify_pairs(database, work / "pairs.txt")
    return database, verification.describe(), time.perf_counter() - start


def map_seeds(database: Path, images: Path, work: Path, seeds) -> list:
    from d2sfm.mapping import run_mapping

    runs = []
    for seed in seeds:
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the mapper's retry notes stay out of the table
            models = run_mapping(database, images, work / f"sparse_{database.stem}_{seed}", seed=seed,
                                 progress=False)
        runs.append((models, time.perf_counter() - start))
    return runs


def median_over_seeds(per_seed: list[dict]) -> dict:
    """Each statistic's median over the seeds' largest models (seeds with no model left out)."""
    models = [statistics for statistics in per_seed if statistics]
    keys = ("points3D", "observations", "mean_track_length", "mean_reprojection_error")
    return {key: float(np.median([m[key] for m in models])) for key in keys} if models else {}


def main() -> None:
    from d2sfm.cli import resolve_device
    from d2sfm.feature_patches import PatchSettings
    from d2sfm.images import list_images
    from d2sfm.refine import RefineSettings, refine_database

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "sacre_coeur" / "images")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "d2_hed_vgg16.pth")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-sift", action="store_true", help="leave out the SIFT row (no pycolmap SIFT)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    torch.set_grad_enabled(False)
    device = resolve_device(args.device)
    names = list_images(args.images)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for label, scales in (("SS", (1.0,)), ("MS", (0.5, 1.0, 2.0))):
            work = scratch / label
            work.mkdir()
            extract_seconds = d2sfm_features(args.images, names, work / "features.h5", args.weights, scales, True,
                                             device=device)
            raw, verification, match_seconds = verified_database(args.images, names, work / "features.h5", work)
            databases = [(f"d2sfm {label}", raw, None)]
            for layer in LAYERS:
                refined = work / f"refined_{layer}.db"
                shutil.copy(raw, refined)
                start = time.perf_counter()
                summary = refine_database(refined, args.images, args.weights, device,
                                          RefineSettings(PatchSettings(layer=layer)), progress=False)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                databases.append((f"d2sfm {label} + refine ({layer})", refined,
                                  {"seconds": time.perf_counter() - start, "summary": summary.describe()}))
            for row, database, refinement in databases:
                result = summarise(map_seeds(database, args.images, work, args.seeds),
                                   {"extract": extract_seconds, "match+verify": match_seconds}, verification)
                if refinement:
                    result["seconds"]["refine"] = refinement["seconds"]
                    result["refinement"] = refinement["summary"]
                results[row] = result
                print(f"  {row}: {result['models_per_seed']} {refinement or ''}", file=sys.stderr)
        if not args.no_sift:
            work = scratch / "sift"
            work.mkdir()
            results["COLMAP SIFT"] = sift_reconstruction(args.images, names, work, args.seeds)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nimages: {args.images} ({len(names)}), weights: {args.weights.name}, device {device_name}, "
          f"torch {torch.__version__}, pycolmap {pycolmap.__version__}, seeds {args.seeds}\n")
    print("| pipeline | registered (largest model, per seed) | 3D points (median over seeds) | observations (median) "
          "| track length (median) | reproj. error (px, median) | extract (s) | refine (s) | refine / extract |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in results.items():
        s, seconds = median_over_seeds(r["largest_per_seed"]), r["seconds"]
        refine = seconds.get("refine")
        ratio = "" if refine is None else f"{refine / seconds['extract']:.2f}"
        print(f"| {label} | {r['registered_per_seed']} | {s.get('points3D', 0):.0f} | {s.get('observations', 0):.0f} | "
              f"{s.get('mean_track_length', 0):.2f} | {s.get('mean_reprojection_error', 0):.2f} | "
              f"{seconds.get('extract', 0):.1f} | {'' if refine is None else f'{refine:.1f}'} | "
              f"{ratio} |")
    for label, r in results.items():
        if "refinement" in r:
            print(f"  {label}: {r['refinement']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
