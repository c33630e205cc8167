"""Mutual nearest-neighbour matching of D2 descriptors, and ``python -m d2sfm.match``.

On a GPU the similarities of a pair are one matrix product when they fit in 1 GiB (16k x 16k features) and row
chunks above, so memory stays bounded at any size; on the CPU they always come in cache-sized row chunks. A match
must be each descriptor's best in both directions; optional filters: a minimum cosine similarity and Lowe's ratio
test on the descriptor distances.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.cluster.ray_backend import DEFAULT_BLOCK_PAIRS
from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.library_logs import add_verbose_argument, set_library_logs
from d2sfm.commands.options import (
    add_cluster_arguments,
    add_device_argument,
    add_match_arguments,
    match_config,
    run_config,
)
from d2sfm.errors import D2sfmError
from d2sfm.io.h5 import list_entries
from d2sfm.matching.pairs import read_pairs


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.match",
        description="Match D2 features of image pairs by mutual nearest neighbours into an HDF5 file (hloc's "
        "matches layout). Rerunning resumes: pairs already matched are skipped, pairs whose images were extracted "
        "again since are matched again, and other --min-similarity/--ratio than the file's are refused.",
    )
    parser.add_argument("features", type=Path, help="features.h5 written by d2sfm.extract, or an hloc features file "
                        "(recognised from its attributes)")
    parser.add_argument("pairs", type=Path, help="pair list, one 'name0 name1' per line (names as in features.h5)")
    parser.add_argument("--output", "-o", type=Path, default=Path("matches.h5"), help="default: matches.h5")
    add_device_argument(parser)
    add_match_arguments(parser, prefix="")
    add_cluster_arguments(parser, "pairs", DEFAULT_BLOCK_PAIRS)
    parser.add_argument("--overwrite", action="store_true", help="delete the output first and redo every pair "
                        "(to change --min-similarity or --ratio of an existing output)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_library_logs(args.verbose)
    if not args.features.is_file():
        raise D2sfmError(f"{args.features}: no such features file; run python -m d2sfm.extract first")
    pairs = read_pairs(args.pairs, known_names=list_entries(args.features))
    if not pairs:  # a pipeline may have no usable pair; a pair list given to match that holds none is a mistake
        raise D2sfmError(f"{args.pairs}: holds no pair to match (only blank lines, comments or an image paired with "
                         "itself); list one 'name0 name1' per line")
    with loading_the_work():  # the work's imports (torch): after the options and the inputs are checked
        from d2sfm.api import match

    matched = match(args.features, pairs, args.output, match_config(args), run=run_config(args))
    print(f"wrote {args.output}: {matched} pairs matched, {len(pairs) - matched} already done")
    return 0


if __name__ == "__main__":
    run_main(main)
