"""SfM on real photos: d2sfm single- and multi-scale against pycolmap's own SIFT pipeline, in one run.

    python benchmarks/sfm_vs_sift.py                                   # ../shared/data/sacre_coeur, HED weights
    python benchmarks/sfm_vs_sift.py --reference /path/to/d2-net       # adds the original D2-Net code + MNN

All pipelines use exhaustive pairs, pycolmap's geometric verification and incremental mapper, and the same
camera set-up (COLMAP's automatic cameras from EXIF). The "original" row extracts with the
original D2-Net code (imported at run time from --reference, never part of this repository) and imports its
keypoints as the original pipeline does (x = column, y = row, without the half-pixel shift to COLMAP's
convention). ``--seeds`` repeats the mapping with several random seeds, since the mapper is randomised. d2sfm's
features are mapped twice: with COLMAP's mapper options (registration: 30 inliers at ratio 0.25; initial pair:
16 degrees) and with d2sfm's (d2sfm.mapping: 15 inliers, 0.1, 8 degrees); the original and SIFT with COLMAP's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycolmap
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402


def d2sfm_features(images: Path, names, output: Path, weights: Path, scales, geometric: bool,
                   device: torch.device | str = "cpu", precision: str = "fp32") -> float:
    from d2sfm.features.extraction import default_loading, extract_features
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig

    config = ExtractionConfig(scales=scales, geometric_centres=geometric, precision=precision)
    extractor = D2Extractor(weights, config, device)
    batch_size, workers = default_loading(torch.device(device))  # as d2sfm.reconstruct extracts
    start = time.perf_counter()
    extract_features(images, names, output, extractor, config.as_dict(), batch_size=batch_size, workers=workers,
                     progress=False)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def original_features(images: Path, names, output: Path, weights: Path, reference: Path) -> float:
    """Extract with the original code; keypoints stored as that pipeline imports them into COLMAP."""
    from d2sfm.io.features import Features
    from d2sfm.io.h5 import FeatureWriter
    from d2sfm.io.images import read_image_bgr

    sys.path.insert(0, str(reference))
    from lib.model_test import D2Net  # the reference checkout, imported at run time
    from lib.pyramid import process_multiscale

    model = D2Net(model_file=str(weights), use_relu=True, use_cuda=False)
    writer = FeatureWriter(output, {"original": True})
    mean = np.array([103.939, 116.779, 123.68], np.float32)
    start = time.perf_counter()
    for name in names:
        image = read_image_bgr(images / name)
        tensor = torch.from_numpy((image.astype(np.float32) - mean).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            keypoints, scores, descriptors = process_multiscale(tensor, model, scales=[1])
        writer.write(name, Features(keypoints[:, [1, 0]].astype(np.float32), keypoints[:, 2], scores,
                                    descriptors, image.shape[1::-1]))
    return time.perf_counter() - start


from d2sfm.sfm.mapping import COLMAP_MAPPER_OPTIONS as COLMAP_MAPPER  # noqa: E402  (pycolmap's defaults)


def d2_reconstruction(images: Path, names, features: Path, work: Path, seeds, registration: dict) -> dict:
    from d2sfm.matching.matcher import match_pairs
    from d2sfm.matching.pairs import exhaustive_pairs, write_pairs

    pairs = exhaustive_pairs(names)
    write_pairs(work / "pairs.txt", pairs)
    start = time.perf_counter()
    match_pairs(features, pairs, work / "matches.h5", progress=False)
    match_seconds = time.perf_counter() - start
    return map_matches(images, names, features, work / "matches.h5", pairs, work, seeds, registration,
                       {"match": match_seconds})


def map_matches(images: Path, names, features: Path, matches: Path, pairs, work: Path, seeds, registration: dict,
                seconds: dict | None = None) -> dict:
    """A database of ``features``' keypoints and ``matches``, verified, then mapped once per seed (into
    ``work/sparse_SEED``); the summary of every seed's models."""
    from d2sfm.sfm.database import create_database, import_features_and_matches, verify_pairs
    from d2sfm.sfm.mapping import run_mapping

    start = time.perf_counter()
    ids = create_database(work / "database.db", images, names)
    import_features_and_matches(work / "database.db", ids, features, matches, pairs, progress=False)
    verification = verify_pairs(work / "database.db")
    verify_seconds = time.perf_counter() - start
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        models = run_mapping(work / "database.db", images, work / f"sparse_{seed}", seed=seed, progress=False,
                             attempts=1, **registration)
        runs.append((models, time.perf_counter() - start))
    return summarise(runs, {**(seconds or {}), "verify": verify_seconds}, verification.describe())


def sift_reconstruction(images: Path, names, work: Path, seeds) -> dict:
    from d2sfm.evaluation.sift_baseline import sift_database
    from d2sfm.sfm.database import verification_summary
    from d2sfm.sfm.mapping import run_mapping

    database = work / "database.db"
    extract_seconds, match_seconds = sift_database(database, images, names)

    runs = []
    for seed in seeds:
        start = time.perf_counter()
        models = run_mapping(database, images, work / f"sparse_{seed}", seed=seed, progress=False,
                             attempts=1, **COLMAP_MAPPER)
        runs.append((models, time.perf_counter() - start))
    return summarise(runs, {"extract": extract_seconds, "match+verify": match_seconds},
                     verification_summary(database).describe())


def summarise(runs, seconds: dict, verification: str) -> dict:
    from d2sfm.sfm.mapping import model_statistics

    models, map_seconds = runs[0]
    largest = model_statistics(models[0]) if models else {}
    return {"models": [m.num_reg_images() for m in models], "largest": largest,
            "registered_per_seed": [max((m.num_reg_images() for m in ms), default=0) for ms, _ in runs],
            "models_per_seed": [[m.num_reg_images() for m in ms] for ms, _ in runs],
            "largest_per_seed": [model_statistics(ms[0]) if ms else {} for ms, _ in runs],
            "seconds": {**seconds, "map": map_seconds}, "verification": verification}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--reference", type=Path, default=None, help="local checkout of the original D2-Net")
    parser.add_argument("--original-centres", action="store_true",
                        help="also run d2sfm with the original keypoint positions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    torch.set_grad_enabled(False)
    from d2sfm.io.images import list_images

    names = list_images(args.images)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        variants = [("d2sfm SS", (1.0,), True), ("d2sfm MS", (0.5, 1.0, 2.0), True)]
        if args.original_centres:
            variants += [("d2sfm SS, original centres", (1.0,), False),
                         ("d2sfm MS, original centres", (0.5, 1.0, 2.0), False)]
        if args.reference:
            variants.insert(0, ("original D2-Net SS", None, False))
        for label, scales, geometric in variants:
            work = scratch / "".join(c if c.isalnum() else "_" for c in label)
            work.mkdir()
            if scales is None:
                extract_seconds = original_features(args.images, names, work / "features.h5", args.weights,
                                                    args.reference)
            else:
                extract_seconds = d2sfm_features(args.images, names, work / "features.h5", args.weights, scales,
                                                 geometric)
            settings = [("COLMAP's", COLMAP_MAPPER)]
            if scales is not None:
                settings.append(("d2sfm's", {}))
            for setting, registration in settings:
                result = d2_reconstruction(args.images, names, work / "features.h5", work, args.seeds, registration)
                result["seconds"] = {"extract": extract_seconds, **result["seconds"]}
                results[f"{label}, {setting} mapper" if scales is not None else label] = result
                print(f"  {label} ({setting}): {result['models_per_seed']}", file=sys.stderr)
        work = scratch / "sift"
        work.mkdir()
        results["COLMAP SIFT"] = sift_reconstruction(args.images, names, work, args.seeds)
        print(f"  COLMAP SIFT: {results['COLMAP SIFT']['models_per_seed']}", file=sys.stderr)

    print(f"\nimages: {args.images} ({len(names)}), weights: {args.weights.name}, pycolmap {pycolmap.__version__}, "
          f"seeds {args.seeds}\n")
    print("| pipeline | models (images each, seed 0) | registered (largest model, per seed) | 3D points | "
          "observations | track length | reproj. error (px) | verified pairs | time extract / match+verify / map (s) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for label, r in results.items():
        s = r["largest"]
        times = " / ".join(f"{v:.1f}" for v in (
            r["seconds"].get("extract", 0), r["seconds"].get("match", 0) + r["seconds"].get("verify", 0)
            + r["seconds"].get("match+verify", 0), r["seconds"]["map"]))
        print(f"| {label} | {r['models']} | {r['registered_per_seed']} | {s.get('points3D', 0)} | "
              f"{s.get('observations', 0)} | {s.get('mean_track_length', 0):.2f} | "
              f"{s.get('mean_reprojection_error', 0):.2f} | {r['verification']} | {times} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
