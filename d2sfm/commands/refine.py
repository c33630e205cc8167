"""Keypoint refinement of a COLMAP database: the database's keypoints move, nothing else changes.

After geometric verification and before mapping, tracks are formed from the verified matches (tracks.py) and
their keypoints are moved by one of two methods:

* ``patch`` (default): each keypoint is aligned to its track's anchor by an affine image-patch alignment
  (patch_alignment.py), which models the change of view between the photos;
* ``featuremetric``: dense-feature patches from the D2 network's first layers (feature_patches.py), adjusted
  jointly per track (keypoint_adjustment.py), as in Lindenberger et al.

features.h5 keeps the raw detections; only database.db is updated. model_refinement.py refines the model after
mapping.

    python -m d2sfm.refine scene/database.db --images scene/images
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.options import add_complete_tracks_argument, add_device_argument, add_weights_argument
from d2sfm.refinement.settings import METHODS


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.refine",
        description="Keypoint refinement, in place (atomically). Given a COLMAP database whose matches are "
        "geometrically verified (before mapping), moves the keypoints of each track to where their image patches "
        "agree across views; given a mapped model folder (--model), aligns each 3D point's observations "
        "(--complete-tracks: and completes its track in covisible images) and bundle-adjusts.")
    parser.add_argument("database", type=Path, nargs="?", help="COLMAP database with verified matches")
    parser.add_argument("--model", type=Path, default=None, help="a COLMAP model folder to refine instead")
    parser.add_argument("--images", type=Path, required=True, help="the image folder the database was built from")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="database refinement: patch alignment (default) or featuremetric (needs the weights); "
                        "a model (--model) is refined by patch alignment")
    add_complete_tracks_argument(parser)
    add_weights_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.database is None) == (args.model is None):
        parser.error("give either a database or --model FOLDER")
    target = args.model if args.model is not None else args.database
    with loading_the_work():  # the work's imports (torch, pycolmap): after the options
        from d2sfm.api import refine

    summary = refine(target, args.images, method=args.method, complete_tracks=args.complete_tracks,
                     weights=args.weights, device=args.device, progress=not args.quiet)
    print(f"refined {target}: {summary.describe()}")
    return 0


if __name__ == "__main__":
    run_main(main)
