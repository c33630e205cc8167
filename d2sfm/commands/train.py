"""``python -m d2sfm.train``: fine-tune D2-Net with the paper's loss on MegaDepth or on homographies of any photos.

Adam (learning rate 1e-3), conv4_3 only by default (``--trainable-layers``), batches of pairs with ground-truth
correspondences, soft detection and the describe-and-detect loss on the stride-8 training network. Checkpoints
are written in the official layout (``{'model': state_dict, ...}``), so ``--weights OUTPUT/checkpoints/last.pth``
works with every d2sfm command and with the original code; ``best.pth`` has the lowest validation loss. A rerun with
the same ``--output`` resumes from ``last.pth`` (model, optimiser, epoch and step; the pairs are a function of seed,
epoch and index, so the resumed run sees exactly the pairs it would have seen); a rerun with options that change
the result is refused. ``--overwrite`` starts over: it deletes what training wrote there (train.json, log.jsonl,
checkpoints/last.pth and best.pth) and nothing else, and refuses a folder that is not a training output.
``log.jsonl`` holds the losses. The Python API is ``d2sfm.training.trainer.train(TrainingConfig(...))``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.options import add_device_argument, add_weights_argument, number
from d2sfm.features.settings import MAX_LOADER_WORKERS
from d2sfm.training.settings import DATA_KINDS, MIN_CROP, TrainingConfig


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.train", description=__doc__.replace("``", ""),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA_KINDS, required=True,
                        help="homography: pairs made from --images; megadepth: --dataset in the D2-Net format")
    parser.add_argument("--output", type=Path, default=Path("outputs/train"),
                        help="train.json, log.jsonl, checkpoints/ (default outputs/train); rerun to resume")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over instead of resuming (deletes what training wrote in --output, nothing else)")
    parser.add_argument("--epochs", type=number(int, at_least=1), default=10,
                        help="number of epochs (default 10, as the original)")
    parser.add_argument("--lr", type=number(float, above=0), default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=number(int, at_least=1), default=1,
                        help="pairs per step (default 1, as the original)")
    parser.add_argument("--trainable-layers", type=number(int, at_least=1, at_most=10), default=1,
                        help="train the last N conv layers (default 1: conv4_3 only, as the paper; up to 10)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the pairs and torch (default 1)")
    parser.add_argument("--workers", type=number(int, at_least=0, at_most=MAX_LOADER_WORKERS), default=0,
                        help=f"data loader processes (default 0; at most {MAX_LOADER_WORKERS})")
    parser.add_argument("--checkpoint-every", type=number(int, at_least=1), default=200,
                        help="also save last.pth every N steps inside an epoch (default 200)")
    homography = parser.add_argument_group("homography pairs")
    homography.add_argument("--images", type=Path, help="folder of training photos")
    homography.add_argument("--val-images", type=Path,
                            help="folder of validation photos (default: the training photos, other pairs)")
    homography.add_argument("--pairs-per-epoch", type=number(int, at_least=1), default=1000,
                            help="training pairs per epoch")
    homography.add_argument("--val-pairs", type=number(int, at_least=0), default=100,
                            help="validation pairs (default 100)")
    homography.add_argument("--strength", type=number(float, at_least=0, at_most=1), default=0.6,
                            help="homography strength in [0, 1]")
    homography.add_argument("--night-probability", type=number(float, at_least=0, at_most=1), default=0.3,
                            help="share of pairs whose second image is night-like (default 0.3)")
    homography.add_argument("--crop", type=number(int, at_least=MIN_CROP), default=256,
                            help=f"crop size in pixels (default 256, at least {MIN_CROP})")
    megadepth = parser.add_argument_group("MegaDepth")
    megadepth.add_argument("--dataset", type=Path, help="MegaDepth root (image and depth paths are relative to it)")
    megadepth.add_argument("--scene-info", type=Path, help="scene_info folder (default DATASET/scene_info)")
    megadepth.add_argument("--train-scenes", type=Path, help="file listing training scenes (default: all)")
    megadepth.add_argument("--val-scenes", type=Path, help="file listing validation scenes (default: none)")
    megadepth.add_argument("--pairs-per-scene", type=number(int, at_least=1), default=100,
                           help="pairs per scene and epoch")
    megadepth.add_argument("--max-scale-ratio", type=number(float, at_least=1), default=1.5, help="default 1.5")
    add_weights_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The parsed options as the library's config (same names; --quiet is progress=False)."""
    names = {option.name for option in dataclasses.fields(TrainingConfig)}
    return TrainingConfig(**{name: value for name, value in vars(args).items() if name in names},
                          progress=not args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(argv))
    with loading_the_work():  # the work's imports (torch): after the options
        from d2sfm.training.trainer import train

    train(config)
    return 0


if __name__ == "__main__":
    run_main(main)
