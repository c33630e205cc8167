"""InLoc: indoor queries against database cutouts with per-pixel 3D (not implemented yet)."""

from __future__ import annotations

import argparse

from d2sfm.errors import D2sfmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", default=None, help="retrieval pairs (query cutout per line)")


def run(args: argparse.Namespace) -> int:
    raise D2sfmError("InLoc localization is not implemented yet")
