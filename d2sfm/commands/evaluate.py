"""``python -m d2sfm.evaluate``: scores in the benchmarks' protocols.

``poses``: localization recall at (position, rotation) thresholds and median errors of a pose file against a
ground truth, both in the ``name qw qx qy qz tx ty tz`` format of the benchmark's submissions.

``hpatches``: mean matching accuracy at 1-10 px on HPatches sequences (the D2-Net paper's protocol), or on
sequences synthesised from any photos; several methods side by side, with a table, a JSON and PNG curves.

``eth``: the ETH local-feature benchmark's SfM statistics for one scene, d2sfm beside COLMAP SIFT.

``gt``: a model's cameras against ground-truth cameras (Strecha .camera files or a COLMAP model): rotation and
position errors after a robust alignment, and the relative-pose AUC; ``--compare`` reconstructs the scene with
d2sfm and COLMAP SIFT side by side and scores each.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from d2sfm.api import evaluate_model, evaluate_poses
from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.commands.options import add_device_argument, number
from d2sfm.errors import D2sfmError
from d2sfm.features.settings import CONV_IMPLEMENTATIONS, PRECISIONS
from d2sfm.io.atomic import write_text_atomic
from d2sfm.localization.pose_scores import THRESHOLD_PRESETS


def _benchmarks():
    """The protocols whose steps live in pipelines/ (one module each; their options are parsed here)."""
    from pipelines import eth, ground_truth, hpatches

    return {"hpatches": hpatches, "eth": eth, "gt": ground_truth}


def add_hpatches_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.hpatches import METHOD_KINDS, SPLITS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="HPatches folder (datasets/hpatches.md)")
    source.add_argument("--images", type=Path,
                        help="any folder of photos: synthesise sequences from them first (splits i, v, n), "
                        "into OUTPUT/sequences")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_KINDS), metavar="METHOD",
                        help=f"any of {', '.join(METHOD_KINDS)} (default: all)")
    parser.add_argument("--weights", action="append", default=None, metavar="[LABEL=]WEIGHTS",
                        help="D2 weights (a .pth path or an official name); repeat to compare several, e.g. "
                        "--weights start=a.pth --weights tuned=b.pth (default: $D2SFM_WEIGHTS or d2_tf)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results and feature cache (default outputs/hpatches, or outputs/hpatches_synth "
                        "with --images)")
    parser.add_argument("--max-keypoints", type=number(int, at_least=0), default=0,
                        help="keep each image's best N features by score (default 0: all, as in the paper)")
    parser.add_argument("--max-edge", type=number(int, at_least=16), default=1600,
                        help="D2 network input size limit (default 1600)")
    parser.add_argument("--original-centres", action="store_true",
                        help="D2: the original code's keypoint positions (default: corrected cell centres)")
    parser.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                        help="D2 backbone convolutions on the CPU (see d2sfm.extract --help)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="D2 backbone arithmetic on a GPU (see d2sfm.extract --help; default fp32)")
    parser.add_argument("--all-sizes", action="store_true",
                        help="keep every sequence (default: drop the paper's 8 with images above 1600 x 1200)")
    parser.add_argument("--seed", type=int, default=0, help="--images: synthesis seed (default 0)")
    parser.add_argument("--synth-max-edge", type=number(int, at_least=16), default=512,
                        help="--images: longer side of the synthesised images (default 512)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="--images: i illumination, v viewpoint, n night-like (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(parser)


def add_eth_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.eth import METHODS

    parser.add_argument("--dataset", type=Path, required=True,
                        help="scene folder: images/ and optionally match_list.txt (datasets/eth.md)")
    parser.add_argument("--output", type=Path, default=None, help="working folder (default outputs/eth/<scene>)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="which pipelines to run (default: all)")
    parser.add_argument("--dense", action="store_true", help="also run MVS and count dense points (needs CUDA "
                        "pycolmap)")
    parser.add_argument("--seed", type=int, default=0, help="mapper seed of the SIFT baseline (default 0)")
    parser.add_argument("--weights", default=None, help="D2 weights: a .pth path or an official name")
    parser.add_argument("--device", default="auto", help="D2 extraction and matching device (default auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_gt_arguments(parser: argparse.ArgumentParser) -> None:
    from d2sfm.evaluation.ground_truth import DEFAULT_INLIER_SHARE
    from pipelines.ground_truth import METHODS

    parser.add_argument("--gt", type=Path, required=True,
                        help="true cameras: a folder of Strecha NAME.camera files or a COLMAP model")
    parser.add_argument("--model", type=Path, default=None,
                        help="the model to score: a COLMAP model folder, or a scene folder (its sparse/0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores and per-camera errors here")
    parser.add_argument("--inlier-share", type=number(float, above=0), default=DEFAULT_INLIER_SHARE,
                        help="alignment: a camera is an inlier when its centre lands within this share of the "
                        f"scene's extent of the true one (default {DEFAULT_INLIER_SHARE})")
    parser.add_argument("--compare", action="store_true",
                        help="instead of --model: reconstruct --images with each of --methods and score them side "
                        "by side (table gt_compare.md, gt_compare.json, error curves gt_compare.png in --output)")
    parser.add_argument("--images", type=Path, default=None, help="--compare: the scene's photos")
    parser.add_argument("--output", type=Path, default=None,
                        help="--compare: working folder (default outputs/gt/<name of the images' parent>)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="--compare: which pipelines (default: all)")
    parser.add_argument("--guess-intrinsics", action="store_true",
                        help="--compare: let every method guess the intrinsics as COLMAP does (default: give them "
                        "the true K when every true camera shares one, as the Strecha protocol does)")
    parser.add_argument("--weights", default=None, help="D2 weights: a .pth path or an official name")
    parser.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                        help="D2 backbone convolutions on the CPU (see d2sfm.extract --help)")
    parser.add_argument("--seed", type=int, default=0, help="--compare: the SIFT mapper's seed (default 0)")
    parser.add_argument("--no-plots", action="store_true", help="--compare: skip the PNG figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(parser)


def score_against_truth(args: argparse.Namespace) -> None:
    """``gt`` with --model: one model scored; with --compare: the comparison pipeline."""
    from d2sfm.evaluation.ground_truth import format_score

    if args.compare:
        from pipelines.ground_truth import GroundTruthOptions, run

        if args.images is None:
            raise D2sfmError("gt --compare reconstructs the scene: pass its photos with --images")
        output = args.output or Path("outputs/gt") / args.images.resolve().parent.name
        run(GroundTruthOptions(
            images=args.images, gt=args.gt, output=output,
            methods=tuple(args.methods), known_intrinsics=not args.guess_intrinsics, weights=args.weights,
            conv=args.conv, device=args.device, seed=args.seed, inlier_share=args.inlier_share,
            plots=not args.no_plots, progress=not args.quiet))
        return
    if args.model is None:
        raise D2sfmError("gt: pass the model to score with --model (or reconstruct and score with --compare)")
    score = evaluate_model(args.model, args.gt, args.inlier_share)
    print(format_score(score))
    if args.json:
        write_text_atomic(args.json, json.dumps(score.as_dict(), indent=2))
        print(f"wrote {args.json}")


PROTOCOL_ARGUMENTS = {"hpatches": add_hpatches_arguments, "eth": add_eth_arguments, "gt": add_gt_arguments}


def run_protocol(args: argparse.Namespace) -> None:
    from pipelines import eth, hpatches

    if args.command == "gt":
        score_against_truth(args)
        return
    if args.command == "eth":
        eth.run(args.dataset, eth.EthOptions(methods=tuple(args.methods), dense=args.dense, seed=args.seed,
                                             weights=args.weights, device=args.device, progress=not args.quiet),
                output=args.output)
        return
    hpatches.run(hpatches.HPatchesOptions(
        dataset=args.dataset, images=args.images, methods=tuple(args.methods), weights=tuple(args.weights or ()),
        output=args.output, max_keypoints=args.max_keypoints, max_edge=args.max_edge,
        original_centres=args.original_centres, conv=args.conv, precision=args.precision, all_sizes=args.all_sizes,
        seed=args.seed, synth_max_edge=args.synth_max_edge, splits=tuple(args.splits), plots=not args.no_plots,
        progress=not args.quiet, device=args.device))


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = CommandParser(prog="python -m d2sfm.evaluate", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    poses = commands.add_parser(
        "poses", help="localization recall at thresholds",
        description="Percentage of ground-truth queries whose predicted pose is within each (metres, degrees) "
        "pair, and the median position and rotation errors. Queries missing from the prediction count as failures.")
    poses.add_argument("--gt", type=Path, required=True, help="ground-truth pose file (name qw qx qy qz tx ty tz)")
    poses.add_argument("--pred", type=Path, required=True, help="predicted pose file, same format")
    poses.add_argument("--thresholds", default="aachen",
                       help=f"a preset ({', '.join(f'{k} = {v}' for k, v in THRESHOLD_PRESETS.items())}) or "
                       "'metres,degrees;...' (default: aachen)")
    poses.add_argument("--json", type=Path, default=None, help="also write the scores and per-query errors here")
    for name, module in _benchmarks().items():
        PROTOCOL_ARGUMENTS[name](commands.add_parser(
            name, help=module.__doc__.split("\n")[0].replace("``", ""), description=module.__doc__.replace("``", ""),
            formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "poses":
        scores = evaluate_poses(args.gt, args.pred, args.thresholds)
        print(scores.table())
        if args.json:
            write_text_atomic(args.json, json.dumps(scores.as_dict(), indent=2))
            print(f"wrote {args.json}")
    else:
        run_protocol(args)
    return 0


if __name__ == "__main__":
    run_main(main)
