"""Shared command-line plumbing: one-line errors, device and weights options."""

from __future__ import annotations

import _thread
import argparse
import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from d2sfm.commands.library_logs import add_verbose_argument, set_library_logs
from d2sfm.errors import D2sfmError

if TYPE_CHECKING:
    import torch


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a command's main, turning D2sfmError, Ctrl-C, SIGTERM, running out of memory and the operating system's
    errors (a folder that cannot be written, a full disk) into one line and an exit status instead of a traceback.
    COLMAP's and OpenCV's own log lines are silenced first; a command's --verbose turns them back on. d2sfm's own
    log messages go to the console as plain lines."""
    set_library_logs(verbose=False)
    show_library_messages()
    stop = StopOnSignal()
    with contextlib.suppress(ValueError):  # (not in the main thread: nothing to install)
        # `kill`, `timeout`, `docker stop`: the same clean stop as Ctrl-C, instead of pycolmap's stack dump
        signal.signal(signal.SIGTERM, stop.handle)
    try:
        status = main(argv)
        if stop.pending:  # the signal's exception was swallowed (it landed in a finaliser): still a stop
            raise KeyboardInterrupt
    except D2sfmError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        stop.pending = False
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        status = 130
    except OSError as error:  # a folder that cannot be made or written, a full disk: the system's words, one line
        print(f"error: {describe_os_error(error)}; finished work is saved: fix that and rerun the same command",
              file=sys.stderr)
        status = 2
    except MemoryError:
        print("error: out of memory; finished work is saved: free memory, or make the work smaller (fewer or "
              "smaller --scales, a smaller --max-edge), and rerun the same command", file=sys.stderr)
        status = 2
    sys.exit(status)


class StopOnSignal:
    """SIGTERM as Ctrl-C: KeyboardInterrupt in the main thread. Python ignores an exception raised while it runs a
    finaliser or a weakref callback ("Exception ignored in ..."), and a signal that arrives there would be lost and
    the run go on to exit 0 (2 times in 6 during matching); so until ``run_main`` has caught it, the interrupt is
    raised again every ``retry`` seconds."""

    def __init__(self, retry: float = 1.0) -> None:
        self.retry = retry
        self.pending = False

    def handle(self, signum, frame) -> None:
        if not self.pending:
            self.pending = True
            threading.Thread(target=self._insist, name="d2sfm-stop", daemon=True).start()
        if not in_finaliser(frame):  # there, the exception would be ignored: the next try comes from _insist
            raise KeyboardInterrupt

    def _insist(self) -> None:
        while True:
            time.sleep(self.retry)
            if not self.pending:
                return
            _thread.interrupt_main()


def in_finaliser(frame) -> bool:
    """Whether Python is running a finaliser (``__del__``) or a weakref callback in ``frame`` or a caller of it,
    where an exception raised is printed as "Exception ignored" and dropped."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith("weakref.py"):
            return True
        frame = frame.f_back
    return False


def show_library_messages() -> None:
    """d2sfm's log records of level INFO and above, as plain lines on stdout (where its progress lines go)."""
    logger = logging.getLogger("d2sfm")
    if not any(getattr(handler, "d2sfm_console", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        handler.d2sfm_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def describe_os_error(error: OSError) -> str:
    """'PATH: reason' where the error names a file (a parent that is a file, no permission, no space left)."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename else reason


class CommandParser(argparse.ArgumentParser):
    """argparse with its errors on one line that names the option and points to --help (argparse's own prints the
    whole usage first: 30 lines for reconstruct, with the error last)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def number(kind: type = int, *, at_least: float | None = None, above: float | None = None,
           at_most: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` for a number within bounds: a bad value is argparse's usage error naming the option,
    before any work starts, instead of a traceback (or a silently used default) later on."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (not math.isfinite(value) or (at_least is not None and value < at_least)
                or (above is not None and value <= above) or (at_most is not None and value > at_most)):
            bounds = [f">= {at_least:g}" if at_least is not None else "", f"> {above:g}" if above is not None else "",
                      f"<= {at_most:g}" if at_most is not None else ""]
            wanted = " and ".join(filter(None, bounds))
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {wanted}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto",
        help="torch device: 'auto' (first CUDA GPU if present, else CPU), 'cpu', 'cuda', 'cuda:1', ...",
    )


def resolve_device(name: str) -> torch.device:
    """Map --device to a torch.device that this machine can run the network on: 'auto', 'cpu', 'cuda' or
    'cuda:N' with N below the number of GPUs, and 'mps' where torch says it is available. Anything else (torch's
    'meta', 'xpu', a GPU that is not there) is a one-line error naming the option, not a crash deep in the network.
    torch is imported here, not with this module, so that commands without a network (export, evaluate poses)
    start without paying for it."""
    import torch

    name = name.strip()
    if name.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "use --device auto, cpu or cuda[:N]"
    try:
        device = torch.device(name.lower())
    except (RuntimeError, ValueError, TypeError):
        raise D2sfmError(f"--device {name!r} is not a device name; {choices}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise D2sfmError(f"--device {name!r}: there is one CPU device; use --device cpu")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise D2sfmError(f"--device {name!r} was asked for but this torch has no usable CUDA GPU; "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise D2sfmError(f"--device {name!r}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1}); use one of those or --device cpu")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise D2sfmError(f"--device {name!r}: Apple's MPS is not available in this torch on this machine; "
                             "use --device cpu")
        if device.index not in (None, 0):
            raise D2sfmError(f"--device {name!r}: there is one MPS device; use --device mps")
        return torch.device("mps")
    raise D2sfmError(f"--device {name!r}: d2sfm runs only on CPU, CUDA GPUs or Apple's MPS, not on torch's "
                     f"{device.type!r} devices; {choices}")


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
