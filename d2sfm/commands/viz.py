"""Pictures as PNG, for reports and for checking results by eye.

``python -m d2sfm.viz pair IMAGE0 IMAGE1 -o pair.png`` extracts D2 features from both images, matches them by mutual
nearest neighbours and draws the matches side by side (plus each image's keypoints); ``pair`` may be left out.
``python -m d2sfm.viz model SCENE/sparse/0 -o model.png`` draws any COLMAP model: points, cameras and match graph.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.options import add_device_argument, add_weights_argument, number
from d2sfm.features.settings import MULTI_SCALE, SINGLE_SCALE
from d2sfm.runtime.device import resolve_device

COMMANDS = ("pair", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.viz", description="Pictures of features and models (PNG).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pair,model}")
    pair = commands.add_parser(
        "pair", help="D2 matches between two images",
        description="Extract D2 features from two images, match them by mutual nearest neighbours and draw the "
        "matches side by side (PNG), plus each image's keypoints next to it.")
    pair.add_argument("image0", type=Path)
    pair.add_argument("image1", type=Path)
    pair.add_argument("--output", "-o", type=Path, default=Path("matches.png"),
                      help="matches picture; keypoint pictures go beside it as <stem>_kpts0.png, _kpts1.png")
    add_weights_argument(pair)
    add_device_argument(pair)
    pair.add_argument("--multiscale", action="store_true", help="multi-scale extraction (0.5, 1, 2)")
    pair.add_argument("--max-edge", type=number(int, at_least=16), default=1600,
                      help="network input size limit (default 1600)")
    pair.add_argument("--height", type=number(int, at_least=16), default=480, help="height of the drawn pair in pixels")
    model = commands.add_parser(
        "model", help="a COLMAP model: points, cameras and match graph",
        description="Draw a COLMAP model (binary or text folder): its points in their colours and its cameras, seen "
        "from behind and above the cameras, beside the match graph (verified inliers from the COLMAP database "
        "when there is one, else the 3D points each pair of images shares).")
    model.add_argument("model", type=Path, help="model folder, e.g. SCENE/sparse/0")
    model.add_argument("--output", "-o", type=Path, default=Path("model.png"))
    model.add_argument("--database", type=Path, default=None,
                       help="COLMAP database for the match graph (default: MODEL/../../database.db when it exists)")
    model.add_argument("--height", type=number(int, at_least=16), default=750,
                       help="picture height in pixels (default 750)")
    return parser


def draw_pair(args: argparse.Namespace) -> None:
    import torch

    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.weights import resolve_weights
    from d2sfm.io.images import read_image_bgr
    from d2sfm.matching.mnn import mutual_nearest_neighbours
    from d2sfm.viz.drawing import draw_keypoints, draw_matches, write_png

    images = [read_image_bgr(args.image0), read_image_bgr(args.image1)]
    config = ExtractionConfig(scales=MULTI_SCALE if args.multiscale else SINGLE_SCALE, max_edge=args.max_edge)
    extractor = D2Extractor(resolve_weights(args.weights), config, resolve_device(args.device))
    features = [extractor.extract(image) for image in images]
    matches = mutual_nearest_neighbours(*(torch.from_numpy(f.descriptors) for f in features))[0].numpy()
    write_png(args.output, draw_matches(*images, features[0].keypoints, features[1].keypoints, matches,
                                        height=args.height))
    for index, (image, f) in enumerate(zip(images, features)):
        write_png(args.output.with_name(f"{args.output.stem}_kpts{index}.png"),
                  draw_keypoints(image, f.keypoints, f.scores))
    counts = ", ".join(str(len(f.keypoints)) for f in features)
    print(f"wrote {args.output}: {len(matches)} mutual matches between {counts} keypoints")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "pair")  # the original form: python -m d2sfm.viz IMAGE0 IMAGE1
    args = build_parser().parse_args(argv)
    if args.command == "pair":
        draw_pair(args)
    else:
        with loading_the_work():  # pycolmap: after the options
            from d2sfm.viz.model_picture import write_model_picture

        path = write_model_picture(args.model, args.output, args.database, height=args.height)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
