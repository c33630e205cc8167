"""The options several commands share, with their help texts, and the number parser that turns a bad value into a one-
line error naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from d2sfm.bounds import out_of_range
from d2sfm.cluster.ray_backend import LOCAL, MAX_RAY_WORKERS
from d2sfm.commands.library_logs import add_verbose_argument
from d2sfm.config import FEATURE_METHODS, FeatureConfig, MatchConfig, RunConfig
from d2sfm.features.settings import CONV_IMPLEMENTATIONS, MULTI_SCALE, PRECISIONS, SINGLE_SCALE
from d2sfm.refinement.settings import METHODS


def number(kind: type = int, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a number within bounds: a bad value is argparse's usage error naming the option,
    before any work starts, instead of a traceback (or a silently used default) later on."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        wanted = out_of_range(value, at_least, above, at_most)
        if wanted:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {wanted}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto",
        help="torch device: 'auto' (first CUDA GPU if present, else CPU), 'cpu', 'cuda', 'cuda:1', ...",
    )


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", default=None, metavar="NAME|PATH",
        help="D2-Net checkpoint: a file path, or one of d2_ots, d2_tf, d2_tf_no_phototourism (downloaded once "
        "into the cache). Default: $D2SFM_WEIGHTS if set, else d2_tf.",
    )


def add_run_arguments(parser: argparse.ArgumentParser, overwrite_help: str = "redo every stage") -> None:
    """The options every staged pipeline command shares: --overwrite, --verbose (COLMAP's and OpenCV's logs),
    --quiet."""
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    add_verbose_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_cluster_arguments(parser: argparse.ArgumentParser, batch_unit: str | None = None,
                          batch_default: int | None = None) -> None:
    """``--ray`` and its worker options; ``--ray-batch`` too where the command has one kind of task (the pipelines,
    which both extract and match, use each kind's default batch)."""
    parser.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                        help="run on a Ray cluster (pip install -e '.[ray]'): without ADDRESS a local one on this "
                        "machine; 'auto' or 'ray://host:port' joins a running one (photos, weights and outputs "
                        "must then be on a filesystem every node sees)")
    parser.add_argument("--ray-workers", type=number(int, at_least=1, at_most=MAX_RAY_WORKERS), default=None,
                        help="with --ray: workers to start (default: one per GPU of the cluster, else one per "
                        f"--ray-cpus-per-worker CPUs; at most {MAX_RAY_WORKERS})")
    parser.add_argument("--ray-cpus-per-worker", type=number(int, at_least=1), default=1,
                        help="with --ray: CPUs (and torch threads) of each worker (default 1)")
    if batch_unit:
        parser.add_argument("--ray-batch", type=number(int, at_least=1), default=batch_default,
                            help=f"with --ray: {batch_unit} per task handed to a worker at most (default "
                            f"{batch_default}; fewer where that would give a worker under four tasks)")


def add_feature_arguments(parser: argparse.ArgumentParser, max_edge: int = 1600) -> None:
    parser.add_argument("--features-method", choices=FEATURE_METHODS, default="d2",
                        help="d2: D2-Net (default); sift: pycolmap's SIFT, the classical baseline, through the same "
                        "pipeline (the D2 options below then only set the image size and keypoint count)")
    parser.add_argument("--single-scale", action="store_true",
                        help="single-scale D2 features (default: multi-scale 0.5, 1, 2, which registers far more "
                        "reliably; see docs/benchmarks.md)")
    parser.add_argument("--original-centres", action="store_true",
                        help="keep the original D2-Net keypoint positions (default: corrected cell centres)")
    parser.add_argument("--max-edge", type=number(int, at_least=16), default=max_edge,
                        help=f"network input size limit (default {max_edge}; keypoints are always returned at "
                        "the original resolution)")
    parser.add_argument("--max-keypoints", type=number(int, at_least=0), default=0,
                        help="keep the best N keypoints per image")
    parser.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                        help="backbone convolutions (see d2sfm.extract --help)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="backbone arithmetic on a GPU (see d2sfm.extract --help)")
    add_cluster_arguments(parser)


def add_match_arguments(parser: argparse.ArgumentParser, prefix: str = "matching: ") -> None:
    """The mutual-nearest-neighbour filters (MatchConfig), for every command that matches."""
    parser.add_argument("--min-similarity", type=number(float, at_least=-1, at_most=1), default=None,
                        help=f"{prefix}drop matches whose descriptor cosine similarity is below this (e.g. 0.8); "
                        "default: off (mutual nearest neighbours only)")
    parser.add_argument("--ratio", type=number(float, above=0, at_most=1), default=None,
                        help=f"{prefix}Lowe's ratio test on descriptor distances (e.g. 0.9); default: off")


def match_config(args: argparse.Namespace) -> MatchConfig:
    return MatchConfig(min_similarity=args.min_similarity, ratio=args.ratio)


def add_refine_argument(parser: argparse.ArgumentParser, where: str, written_to: str = "database.db") -> None:
    """``--refine/--no-refine`` and ``--refine-method``, shared by the pipelines (``where``: what is refined,
    ``written_to``: the file that gets the refined keypoints)."""
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="keypoint refinement after matching (on by default): " + where + " move (a few "
                        f"pixels at most) to where their image patches agree across views; {written_to} gets the "
                        "refined keypoints, features.h5 keeps the detections. --no-refine uses the raw "
                        "detections, as the original D2-Net pipeline did (docs/benchmarks.md, 'Keypoint "
                        "refinement')")
    parser.add_argument("--refine-method", choices=METHODS, default="patch",
                        help="patch: affine patch alignment under the local change of view (default); "
                        "featuremetric: agreement of D2's early VGG features (Lindenberger et al.)")


def add_complete_tracks_argument(parser: argparse.ArgumentParser) -> None:
    """``--complete-tracks``: the model stage's track completion (off by default)."""
    parser.add_argument("--complete-tracks", action="store_true",
                        help="after mapping, also add each 3D point where its patch is found in covisible images "
                        "that do not observe it (off by default: on the Strecha scenes it cost half the model "
                        "refinement and lowered the accuracy against ground truth on 2 of 3; docs/benchmarks.md)")


def feature_config(args: argparse.Namespace) -> FeatureConfig:
    """The FeatureConfig of ``add_feature_arguments``' options (and --weights)."""
    return FeatureConfig(method=args.features_method,
                         scales=SINGLE_SCALE if args.single_scale else MULTI_SCALE, max_edge=args.max_edge,
                         max_keypoints=args.max_keypoints, conv=args.conv, precision=args.precision,
                         geometric_centres=not args.original_centres, weights=args.weights)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of --device, the --ray options, --quiet and --overwrite, where the command has them."""
    return RunConfig(device=getattr(args, "device", "auto"), ray=getattr(args, "ray", None),
                     ray_workers=getattr(args, "ray_workers", None),
                     ray_cpus_per_worker=getattr(args, "ray_cpus_per_worker", 1),
                     ray_batch=getattr(args, "ray_batch", None), progress=not getattr(args, "quiet", False),
                     overwrite=getattr(args, "overwrite", False))
