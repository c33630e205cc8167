"""How many of the exhaustively verified pairs does retrieval keep?

    python -m d2sfm.reconstruct outputs/sacre_coeur --images ../shared/data/sacre_coeur/images --pairs exhaustive
    python benchmarks/retrieval_pairs.py outputs/sacre_coeur --top-k 5 10

Reads a scene reconstructed with exhaustive pairs: its database gives the verified pairs (at least
``--min-inliers`` inliers), its features.h5 the global descriptors (GeM-pooled D2 feature maps). For each k, prints
how many pairs retrieval proposes and how many of the verified pairs it keeps, beside a random choice of the same
number of pairs per image as the baseline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pycolmap

from d2sfm.io.h5 import list_entries, read_features
from d2sfm.matching.pairs import retrieval_pairs, unique_pairs


def verified_pairs(database: Path, min_inliers: int) -> dict[frozenset, int]:
    with pycolmap.Database.open(database) as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
    verified = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        if len(geometry.inlier_matches) >= min_inliers:
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            verified[frozenset((names[a], names[b]))] = len(geometry.inlier_matches)
    return verified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path)
    parser.add_argument("--top-k", type=int, nargs="+", default=[5])
    parser.add_argument("--min-inliers", type=int, default=15)
    parser.add_argument("--strong-inliers", type=int, default=100, help="a 'strong' pair has at least this many")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = list_entries(args.scene / "features.h5")
    descriptors = np.stack([read_features(args.scene / "features.h5", n).global_descriptor for n in names])
    verified = verified_pairs(args.scene / "database.db", args.min_inliers)
    total = len(names) * (len(names) - 1) // 2
    print(f"scene: {args.scene} ({len(names)} images, {total} exhaustive pairs, {len(verified)} verified with "
          f">= {args.min_inliers} inliers)\n")
    strong = {pair for pair, inliers in verified.items() if inliers >= args.strong_inliers}
    print(f"| k | method | pairs proposed | verified pairs kept | share of verified | strong pairs kept "
          f"(>= {args.strong_inliers} inliers, {len(strong)} in all) | inliers kept |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(args.seed)
    for k in args.top_k:
        retrieved = {frozenset(p) for p in retrieval_pairs(names, descriptors, k)}
        random = {frozenset(p) for p in unique_pairs(
            (names[i], names[j]) for i in range(len(names))
            for j in rng.choice([x for x in range(len(names)) if x != i], min(k, len(names) - 1), replace=False))}
        for label, chosen in (("retrieval (GeM on D2 maps)", retrieved), ("random", random)):
            kept = [pair for pair in chosen if pair in verified]
            inliers = sum(verified[pair] for pair in kept) / max(sum(verified.values()), 1)
            print(f"| {k} | {label} | {len(chosen)} | {len(kept)} | {100 * len(kept) / max(len(verified), 1):.0f}% | "
                  f"{len(strong & set(kept))} | {100 * inliers:.0f}% |")


if __name__ == "__main__":
    main()
