"""``python -m d2sfm.export hloc FEATURES [MATCHES] -o DIR [--model SCENE/sparse/0]``: d2sfm's features and matches in
hloc's conventions, so that hloc's tools (its matchers, triangulation, localization) read them as their own.

hloc's conventions, as its extract_features.py and match_features.py write them:

* features: one group per image name (slashes make nested groups) with ``keypoints`` (N, 2) in pixels with the
  centre of the top-left pixel at (0, 0) (COLMAP's 0.5 is added by hloc when it imports them), ``descriptors``
  (D, N), ``scores`` (N,) and ``image_size`` (width, height); float16 where hloc's ``as_half`` would store it.
* global descriptors, when the file holds them: ``global-feats.h5`` with one ``global_descriptor`` per image, as
  hloc's retrieval step reads them.
* matches: one group per pair named ``name0/name1`` with slashes inside the names replaced by '-' (d2sfm's layout
  already), ``matches0`` (N0,) the index in image 1 or -1 and ``matching_scores0`` (N0,) float16. hloc writes
  ``matches0`` as int16, which wraps above 32,767 keypoints; int16 is written where it holds, int32 otherwise.

With ``--model``, the keypoints of every image of that COLMAP model are the model's 2D points, so that 2D point i
of an image is keypoint i of the file, as hloc's localize_sfm and triangulation assume (they look a 3D point up by
keypoint index). d2sfm's refined models break that equality for features.h5 in two ways: keypoint refinement
(database, then model) moves the first N 2D points (N: the image's keypoints in features.h5) by up to ~12 px, and
track completion (--complete-tracks) appends 2D points after them (25-35% of the observations on real scenes).
The export writes the model's positions (hloc's convention: COLMAP's x, y - 0.5, float64 as the model holds
them), keeps each original keypoint's descriptor and score, and gives every appended 2D point a zero descriptor
and score 0 (see
``aligned_features``: an all-zero descriptor cannot win a thresholded or ratio-tested nearest-neighbour match, while a
copied one would tie with its original). Images of the features file that the model does not hold (or holds without
2D points) keep their features unchanged.

The other way needs no command: every d2sfm command reads an hloc features file as it is (d2sfm.io).
Each output file is written under a temporary name and renamed when complete. MATCHES must fit FEATURES (each
pair's images in it, its indices below their keypoint counts, and, where d2sfm.match recorded them, matched from
the features it holds now): matches made from features extracted since would point at other keypoints, so they
are refused in one line before anything is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.io.hloc_export import export_hloc


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.export", description=__doc__.split("\n\n")[0].replace(
        "``", ""))
    formats = parser.add_subparsers(dest="format", required=True)
    hloc = formats.add_parser("hloc", help="hloc's features and matches files",
                              description="Write FEATURES (and MATCHES) in hloc's conventions into DIR: features.h5, "
                              "global-feats.h5 (when there are global descriptors) and matches.h5.")
    hloc.add_argument("features", type=Path, help="d2sfm features file (features.h5)")
    hloc.add_argument("matches", type=Path, nargs="?", help="d2sfm matches file (matches.h5)")
    hloc.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    hloc.add_argument("--model", type=Path, default=None,
                      help="a COLMAP model folder mapped from FEATURES (e.g. SCENE/sparse/0): each of its images gets "
                      "the model's 2D points as keypoints (refined positions, and the points refinement added, with "
                      "zero descriptors), so that hloc's localize_sfm and triangulation find 2D point i at keypoint i")
    hloc.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = export_hloc(args.features, args.output, matches=args.matches, model=args.model, progress=not args.quiet)
    print(f"wrote {done.features}: {done.images} images"
          + (f" ({done.aligned} with the 2D points of {args.model}, {done.added} of them without a descriptor)"
             if args.model is not None else "")
          + (f"; {done.global_features}: global descriptors" if done.global_features else ""))
    if done.matches is not None:
        print(f"wrote {done.matches}: {done.pairs} pairs")
    return 0


if __name__ == "__main__":
    run_main(main)
