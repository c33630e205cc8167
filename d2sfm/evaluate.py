"""``python -m d2sfm.evaluate``: scores in the benchmarks' protocols.

``poses``: localization recall at (position, rotation) thresholds and median errors of a pose file against a
ground truth, both in the ``name qw qx qy qz tx ty tz`` format of the benchmark's submissions.

``hpatches``: mean matching accuracy at 1-10 px on HPatches sequences (the D2-Net paper's protocol), or on
sequences synthesised from any photos; several methods side by side, with a table, a JSON and PNG curves.

``eth``: the ETH local-feature benchmark's SfM statistics for one scene, d2sfm beside COLMAP SIFT.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from d2sfm.cli import add_device_argument, resolve_device, run_main
from d2sfm.errors import D2sfmError
from d2sfm.extractor import CONV_IMPLEMENTATIONS
from d2sfm.fileutil import write_text_atomic
from d2sfm.pose_scores import THRESHOLD_PRESETS, parse_thresholds, score_poses
from d2sfm.poses import read_poses


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m d2sfm.evaluate", description=summary)
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
    _add_hpatches_parser(commands)
    from pipelines import eth

    eth.add_arguments(commands.add_parser(
        "eth", help="ETH local-feature SfM statistics, d2sfm beside COLMAP SIFT",
        description=eth.__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _add_hpatches_parser(commands) -> None:
    from pipelines.hpatches import METHOD_KINDS
    from pipelines.synthetic_sequences import SPLITS

    hpatches = commands.add_parser(
        "hpatches", help="mean matching accuracy on HPatches or synthesised sequences",
        description="The D2-Net paper's HPatches protocol: image 1 of each sequence against images 2-6, mutual "
        "nearest neighbours, a match correct within t px of the ground-truth homography; MMA at 1-10 px overall "
        "and per split, features per image, matches per pair. Features are cached per method and setting under "
        "OUTPUT/features (a rerun only extracts what is missing). Writes OUTPUT/hpatches.json, mma.png, counts.png.")
    source = hpatches.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="HPatches folder (datasets/hpatches.md)")
    source.add_argument("--images", type=Path,
                        help="any folder of photos: synthesise sequences from them first (splits i, v, n), "
                        "into OUTPUT/sequences")
    hpatches.add_argument("--methods", nargs="+", default=list(METHOD_KINDS), metavar="METHOD",
                          help=f"any of {', '.join(METHOD_KINDS)} (default: all)")
    hpatches.add_argument("--weights", action="append", default=None, metavar="[LABEL=]WEIGHTS",
                          help="D2 weights (a .pth path or an official name); repeat to compare several, e.g. "
                          "--weights start=a.pth --weights tuned=b.pth (default: $D2SFM_WEIGHTS or d2_tf)")
    hpatches.add_argument("--output", type=Path, default=None,
                          help="results and feature cache (default outputs/hpatches, or outputs/hpatches_synth "
                          "with --images)")
    hpatches.add_argument("--max-keypoints", type=int, default=0,
                          help="keep each image's best N features by score (default 0: all, as in the paper)")
    hpatches.add_argument("--max-edge", type=int, default=1600, help="D2 network input size limit (default 1600)")
    hpatches.add_argument("--original-centres", action="store_true",
                          help="D2: the original code's keypoint positions (default: corrected cell centres)")
    hpatches.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                          help="D2 backbone convolutions on the CPU (see d2sfm.extract --help)")
    hpatches.add_argument("--all-sizes", action="store_true",
                          help="keep every sequence (default: drop the paper's 8 with images above 1600 x 1200)")
    hpatches.add_argument("--seed", type=int, default=0, help="--images: synthesis seed (default 0)")
    hpatches.add_argument("--synth-max-edge", type=int, default=512,
                          help="--images: longer side of the synthesised images (default 512)")
    hpatches.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                          help="--images: i illumination, v viewpoint, n night-like (default: all)")
    hpatches.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    hpatches.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(hpatches)


def run_hpatches(args: argparse.Namespace) -> None:
    from d2sfm.mma import format_table
    from d2sfm.plots import PLOTS_HINT, plot_counts, plot_mma
    from pipelines.hpatches import MAX_SIZE, parse_methods, run_benchmark
    from pipelines.synthetic_sequences import synthesise_sequences

    output = args.output or Path("outputs/hpatches_synth" if args.images else "outputs/hpatches")
    dataset = args.dataset
    if args.images:
        dataset = output / "sequences"
        synthesise_sequences(args.images, dataset, args.seed, args.synth_max_edge, args.splits,
                             progress=not args.quiet)
    if args.max_keypoints < 0:
        raise D2sfmError(f"--max-keypoints {args.max_keypoints}: pass 0 (all) or a positive number")
    methods = parse_methods(args.methods, args.weights or [])
    report = run_benchmark(dataset, methods, output, resolve_device(args.device), args.max_keypoints,
                           args.max_edge, args.original_centres, args.conv,
                           None if args.all_sizes else MAX_SIZE, progress=not args.quiet)
    kept, excluded = len(report["sequences"]), len(report["excluded"])
    print(f"{kept} sequences ({excluded} excluded: {', '.join(report['excluded']) or 'none'})")
    print(format_table(report["methods"]))
    print(f"wrote {output / 'hpatches.json'}")
    if args.no_plots:
        return
    if plot_mma(report["methods"], output / "mma.png") and plot_counts(report["methods"], output / "counts.png"):
        print(f"wrote {output / 'mma.png'} and {output / 'counts.png'}")
    else:
        print(PLOTS_HINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "poses":
        scores = score_poses(read_poses(args.gt), read_poses(args.pred), parse_thresholds(args.thresholds))
        print(scores.table())
        if args.json:
            write_text_atomic(args.json, json.dumps(scores.as_dict(), indent=2))
            print(f"wrote {args.json}")
    elif args.command == "hpatches":
        run_hpatches(args)
    elif args.command == "eth":
        from pipelines import eth

        eth.run(args)
    return 0


if __name__ == "__main__":
    run_main(main)
