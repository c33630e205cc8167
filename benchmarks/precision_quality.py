"""Does a lower precision keep D2's quality? (issue 13, point 4: bf16 becomes the GPU default only if it does.)
fp32 and bf16 (and fp16 if asked) side by side, single- and multi-scale, in one run on the GPU:

* matching accuracy in the HPatches protocol on the sequences synthesised from the Sacre Coeur photos (the same
  protocol and sequences as docs/benchmarks.md's MMA table: seed 0, 512 px);
* how far the keypoints of the Sacre Coeur photos (1600 px, as reconstruct extracts them) move from fp32's;
* the Sacre Coeur reconstruction with d2sfm's mapper options, over several mapper seeds.

    python benchmarks/precision_quality.py --device cuda
    python benchmarks/precision_quality.py --precision fp32 --pyramid SS --photos 2 --seeds 0   # a CPU check

The features of each (pyramid, precision) are extracted once and used by all three.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402

SHOWN_THRESHOLDS = (1, 3, 5, 10)
MOVEMENT_DISTANCES = (0.05, 1.0)


def photo_folder(source: Path, count: int | None, work: Path) -> Path:
    """``source``, or a folder of links to its first ``count`` photos."""
    from d2sfm.io.images import list_images

    if not count:
        return source
    folder = work / "photos"
    folder.mkdir()
    for name in list_images(source)[:count]:
        os.symlink((source / name).resolve(), folder / Path(name).name)
    return folder


def movement(reference: Path, other: Path, names) -> list[float]:
    """Mean share of ``other``'s keypoints within each of MOVEMENT_DISTANCES of ``reference``'s."""
    from d2sfm.evaluation.parity import agreement
    from d2sfm.io.h5 import read_features

    shares = []
    for name in names:
        result = agreement(read_features(other, name).keypoints, read_features(reference, name).keypoints)
        shares.append([result.ours_within(d) for d in MOVEMENT_DISTANCES])
    return list(np.mean(shares, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR, help="photos (default: Sacre Coeur)")
    parser.add_argument("--photos", type=int, default=None, help="use only the first N photos (a quick check)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                        help="fp32 first: it is the reference (default fp32 bf16)")
    parser.add_argument("--pyramid", nargs="+", default=["SS", "MS"], choices=["SS", "MS"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mapper seeds (default 0 1 2)")
    args = parser.parse_args()
    args.precision = list(dict.fromkeys(args.precision))
    if args.precision[0] != "fp32":
        parser.error("--precision must start with fp32, the reference the others are compared with")

    import pycolmap
    import torch

    from benchmarks.sfm_vs_sift import d2_reconstruction, d2sfm_features
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
    from d2sfm.io.images import list_images
    from pipelines.hpatches import D2Options, Method, find_sequences, run_benchmark
    from pipelines.synthetic_sequences import synthesise_sequences

    pycolmap.logging.minloglevel = 2
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="d2sfm-precision-"))
    rows = []
    try:
        photos = photo_folder(args.images, args.photos, work)
        names = list_images(photos)
        sequences = work / "sequences"
        synthesise_sequences(photos, sequences, seed=0, max_edge=512, progress=False)
        _, kept, _ = find_sequences(sequences)
        for pyramid in args.pyramid:
            scales = MULTI_SCALE if pyramid == "MS" else SINGLE_SCALE
            kind = "d2-ms" if pyramid == "MS" else "d2-ss"
            fp32_features = None
            for precision in args.precision:
                label = f"{pyramid} {precision}"
                print(f"  {label}", file=sys.stderr)
                report = run_benchmark(sequences, [Method(kind, label, args.weights)], work / "mma", device,
                                       D2Options(precision=precision), progress=False)
                mma = report["methods"][label]["overall"]
                folder = work / label.replace(" ", "_")
                folder.mkdir()
                features = folder / "features.h5"
                extract_seconds = d2sfm_features(photos, names, features, args.weights, scales, True,
                                                 device=device, precision=precision)  # the loop, synchronised
                fp32_features = fp32_features or features
                moved = movement(fp32_features, features, names)
                sfm = d2_reconstruction(photos, names, features, folder, args.seeds, {})
                rows.append({"label": label, "mma": mma, "thresholds": report["methods"][label]["thresholds"],
                             "moved": moved, "sfm": sfm, "extract": extract_seconds})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"Photos: {args.images} ({len(names)}); weights {args.weights.name}; device {device}; MMA on {len(kept)} "
          f"sequences synthesised from them (seed 0, 512 px); reconstructions with d2sfm's mapper options, seeds "
          f"{args.seeds} (medians over seeds; registered per seed)\n")
    print("| pyramid, precision | " + " | ".join(f"MMA@{t}px" for t in SHOWN_THRESHOLDS) + " | features/image | "
          "keypoints within 0.05 / 1 px of fp32's | registered per seed | 3D points | track length | "
          "reproj. error (px) | extraction of the photos (s) |")
    print("| --- | " + "---: | " * len(SHOWN_THRESHOLDS) + "---: | --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        thresholds = list(row["thresholds"])
        mma = " | ".join(f"{row['mma']['mma'][thresholds.index(t)]:.3f}" for t in SHOWN_THRESHOLDS)
        models = [stats for stats in row["sfm"]["largest_per_seed"] if stats]

        def median(key, models=models):
            return statistics.median(stats[key] for stats in models) if models else float("nan")

        print(f"| {row['label']} | {mma} | {row['mma']['features_per_image']:.0f} | "
              f"{row['moved'][0]:.1%} / {row['moved'][1]:.1%} | {row['sfm']['registered_per_seed']} | "
              f"{median('points3D'):.0f} | {median('mean_track_length'):.2f} | "
              f"{median('mean_reprojection_error'):.3f} | {row['extract']:.1f} |")


if __name__ == "__main__":
    main()
