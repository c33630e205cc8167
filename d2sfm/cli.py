"""Shared command-line plumbing: one-line errors, device and weights options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from d2sfm.errors import D2sfmError
from d2sfm.library_logs import add_verbose_argument, set_library_logs

if TYPE_CHECKING:
    import torch


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a command's main, turning D2sfmError and Ctrl-C into one line and an exit status instead of a traceback.
    COLMAP's and OpenCV's own log lines are silenced first; a command's --verbose turns them back on."""
    set_library_logs(verbose=False)
    try:
        status = main(argv)
    except D2sfmError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        status = 130
    sys.exit(status)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto",
        help="torch device: 'auto' (first CUDA GPU if present, else CPU), 'cpu', 'cuda', 'cuda:1', ...",
    )


def resolve_device(name: str) -> torch.device:
    """Map --device to a torch.device; asking for CUDA on a machine without it is a clear error, not a crash.
    torch is imported here, not with this module, so that commands without a network (export, evaluate poses)
    start without paying for it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise D2sfmError(f"--device {name!r} is not a torch device ({error}); use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise D2sfmError(f"--device {name} was asked for but this torch has no usable CUDA GPU; use --device cpu")
    return device


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
