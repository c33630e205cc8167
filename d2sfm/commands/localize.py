"""``python -m d2sfm.localize aachen|inloc --dataset DIR``: localize a benchmark's queries with D2 features and
write its submission file (and score it when the dataset folder holds a ground truth).

The benchmark-specific steps live in ``pipelines/`` (one module per benchmark); this command parses the options
they share and hands over. Every stage writes under ``--output`` and is skipped on a rerun once complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.commands.library_logs import set_library_logs
from d2sfm.commands.options import add_device_argument, add_feature_arguments, add_run_arguments, add_weights_argument


def _benchmarks():
    from pipelines import aachen, inloc

    return {"aachen": aachen, "inloc": inloc}


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = CommandParser(prog="python -m d2sfm.localize", description=summary)
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, module in _benchmarks().items():
        sub = commands.add_parser(name, help=module.__doc__.split("\n")[0],
                                  description=module.__doc__.replace("``", ""),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--dataset", type=Path, required=True,
                         help=f"the dataset folder (layout: datasets/{name}.md)")
        sub.add_argument("--output", type=Path, default=None,
                         help=f"working and result folder (default outputs/{name}...)")
        module.add_arguments(sub)
        add_weights_argument(sub)
        add_device_argument(sub)
        add_feature_arguments(sub)
        add_run_arguments(sub, "delete --output first and redo every stage")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_library_logs(args.verbose)
    return _benchmarks()[args.benchmark].run(args)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_main(main)
