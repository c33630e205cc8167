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

from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.io.atomic import write_text_atomic
from d2sfm.localization.pose_scores import THRESHOLD_PRESETS, parse_thresholds, score_poses
from d2sfm.localization.poses import read_poses


def _benchmarks():
    """The protocols whose steps live in pipelines/ (one module each, with add_arguments and run)."""
    from pipelines import eth, hpatches

    return {"hpatches": hpatches, "eth": eth}


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
        module.add_arguments(commands.add_parser(
            name, help=module.__doc__.split("\n")[0].replace("``", ""), description=module.__doc__.replace("``", ""),
            formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "poses":
        scores = score_poses(read_poses(args.gt), read_poses(args.pred), parse_thresholds(args.thresholds))
        print(scores.table())
        if args.json:
            write_text_atomic(args.json, json.dumps(scores.as_dict(), indent=2))
            print(f"wrote {args.json}")
    else:
        _benchmarks()[args.command].run(args)
    return 0


if __name__ == "__main__":
    run_main(main)
