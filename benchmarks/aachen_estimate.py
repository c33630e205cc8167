"""Estimated time of a full Aachen v1.1 retrieval run (6,697 database and 1,015 query images) on this machine,
from a measured subset.

The Aachen images are not here, so the subset is made of the shared Sacre Coeur photos resized to Aachen's sizes
(1600 x 1063 database, 1600 x 1200 queries): extraction time depends on the pixel count, matching time on the
keypoint counts, both measured here. The pair counts come from the real pair lists in ../shared/data/.

    python benchmarks/aachen_estimate.py [--images N] [--pairs N] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR, SHARED, WEIGHTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images extracted for the measurement")
    parser.add_argument("--pairs", type=int, default=30, help="pairs matched for the measurement")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--conv", default="exact")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sys.path.insert(0, str(REPO))
    from d2sfm.features.extraction import default_loading, extract_features
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
    from d2sfm.io.h5 import read_features
    from d2sfm.io.images import list_images
    from d2sfm.matching.matcher import match_pairs
    from d2sfm.matching.pairs import read_pairs
    from d2sfm.runtime.device import resolve_device

    device = resolve_device(args.device)
    batch_size, workers = default_loading(device)  # as d2sfm.reconstruct and d2sfm.localize extract
    protocol = read_pairs(SHARED / "data" / "aachen_local_features" / "image_pairs_to_match_v1_1.txt")
    db_pairs = [p for p in protocol if p[0].startswith("db/") and p[1].startswith("db/")]
    query_pairs = read_pairs(SHARED / "data" / "retrieval_pairs" / "aachen_v1.1" / "pairs-query-netvlad50.txt")
    n_db = len({n for p in db_pairs for n in p} | {b for _, b in query_pairs})
    n_queries = len({a for a, _ in query_pairs})
    n_pairs = len(db_pairs) + len(query_pairs)
    source = SACRE_COEUR
    names = list_images(source)[: args.images]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for index, name in enumerate(names):  # alternate database-like and query-like sizes
            image = cv2.imread(str(source / name))
            size = (1600, 1063) if index % 2 == 0 else (1600, 1200)
            if image.shape[0] > image.shape[1]:
                size = size[::-1]
            cv2.imwrite(str(scratch / f"{index}.jpg"), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
        images = [f"{i}.jpg" for i in range(len(names))]
        for label, scales in (("single-scale", SINGLE_SCALE), ("multi-scale (default)", MULTI_SCALE)):
            config = ExtractionConfig(scales=scales, conv=args.conv, geometric_centres=True)
            extractor = D2Extractor(args.weights, config, device)
            features = scratch / f"{len(rows)}.h5"
            if device.type == "cuda":  # untimed: the CUDA context, cuDNN and cuBLAS start, once per pyramid
                warm = scratch / f"warm{len(rows)}.h5"
                extract_features(scratch, images[:2], warm, extractor, config.as_dict(), progress=False, workers=0)
                match_pairs(warm, [tuple(images[:2])], scratch / f"warm{len(rows)}_m.h5", device, progress=False)
            start = time.perf_counter()
            extract_features(scratch, images, features, extractor, config.as_dict(), batch_size=batch_size,
                             workers=workers, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            per_image = (time.perf_counter() - start) / len(images)
            keypoints = np.mean([len(read_features(features, n).keypoints) for n in images])
            pairs = [(images[i], images[j]) for i in range(len(images)) for j in range(i + 1, len(images))]
            rounds = max(1, -(-args.pairs // len(pairs)))
            start = time.perf_counter()
            for round_index in range(rounds):  # a fresh output each round, so no pair is skipped as done
                match_pairs(features, pairs, scratch / f"m{len(rows)}_{round_index}.h5", device, progress=False)
            per_pair = (time.perf_counter() - start) / (rounds * len(pairs))
            total = (n_db + n_queries) * per_image + n_pairs * per_pair
            rows.append((label, per_image, keypoints, per_pair, total))
            print(f"  {label}: {per_image:.1f} s/image, {keypoints:.0f} keypoints, {1000 * per_pair:.0f} ms/pair",
                  file=sys.stderr)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"\nAachen v1.1 retrieval run: {n_db} database + {n_queries} query images, {n_pairs} pairs "
          f"({len(db_pairs)} database, {len(query_pairs)} query); device {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, conv {args.conv}\n")
    print("| features | extraction (s/image) | keypoints/image | matching (ms/pair) | extraction total (h) | "
          "matching total (h) | estimated total (h) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, per_image, keypoints, per_pair, total in rows:
        print(f"| {label} | {per_image:.1f} | {keypoints:.0f} | {1000 * per_pair:.0f} | "
              f"{(n_db + n_queries) * per_image / 3600:.1f} | {n_pairs * per_pair / 3600:.1f} | {total / 3600:.1f} |")


if __name__ == "__main__":
    main()
