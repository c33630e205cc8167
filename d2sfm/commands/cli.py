"""Shared command-line plumbing: one-line errors, device and weights options."""

from __future__ import annotations

import _thread
import argparse
import ast
import contextlib
import importlib.util
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from d2sfm.commands.library_logs import set_library_logs
from d2sfm.errors import D2sfmError
from d2sfm.runtime.allocator import keep_freed_memory


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a command's main, turning D2sfmError, Ctrl-C, SIGTERM, running out of memory and the operating system's
    errors (a folder that cannot be written, a full disk) into one line and an exit status instead of a traceback.
    COLMAP's and OpenCV's own log lines are silenced first; a command's --verbose turns them back on. d2sfm's own
    log messages go to the console as plain lines."""
    with contextlib.suppress(ImportError):  # (extraction and matching run without it: a GPU box, a cluster worker)
        # pycolmap installs glog's signal handlers (a native stack dump on SIGTERM) when it loads: it must load
        # before ours below, not during the work; it costs a tenth of a second, torch (loaded later) 1.5-3 s
        import pycolmap  # noqa: F401
    set_library_logs(verbose=False)
    show_library_messages()
    keep_freed_memory()  # before the first large allocation: glibc's pad applies from the heap's next growth
    stop = StopOnSignal()
    with contextlib.suppress(ValueError):  # (not in the main thread: nothing to install)
        # `kill`, `timeout`, `docker stop`: the same clean stop as Ctrl-C, instead of pycolmap's stack dump
        signal.signal(signal.SIGTERM, stop.handle)
    with contextlib.suppress(AttributeError, ValueError, OSError):  # (no pthread_sigmask on this system)
        # a parent that started us with these blocked (some schedulers and process pools do; the mask survives
        # exec) would have them held forever: the stop never arrives
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
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
    raised again about every ``retry`` seconds, at random intervals so that it cannot fall in step with a loop
    that spends half its time in a finaliser."""

    def __init__(self, retry: float = 0.25) -> None:
        self.retry = retry
        self.pending = False

    def handle(self, signum, frame) -> None:
        if not self.pending:
            self.pending = True
            threading.Thread(target=self._insist, name="d2sfm-stop", daemon=True).start()
        if not in_finaliser(frame):  # there, the exception would be ignored: the next try comes from _insist
            raise KeyboardInterrupt

    def _insist(self) -> None:
        jitter = random.Random()
        while True:
            time.sleep(self.retry * jitter.uniform(0.5, 1.5))
            if not self.pending:
                return
            # as if SIGTERM came again, into ``handle``: interrupt_main's default, SIGINT, does nothing where the
            # parent ignores SIGINT (a shell's background job), and the stop was lost when the first try had
            # landed in a finaliser
            _thread.interrupt_main(signal.SIGTERM)


def in_finaliser(frame) -> bool:
    """Whether Python is running a finaliser (``__del__``) or a weakref callback in ``frame`` or a caller of it,
    where an exception raised is printed as "Exception ignored" and dropped."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith("weakref.py"):
            return True
        frame = frame.f_back
    return False


def show_library_messages() -> None:
    """d2sfm's log records of level INFO and above, as they are written (the library indents its detail lines
    itself), on stdout: what the commands print. A program that imports d2sfm decides for itself."""
    logger = logging.getLogger("d2sfm")
    if not any(getattr(handler, "d2sfm_console", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.d2sfm_console = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def describe_os_error(error: OSError) -> str:
    """'PATH: reason' where the error names a file (a parent that is a file, no permission, no space left)."""
    reason = error.strerror or str(error) or type(error).__name__
    if isinstance(error, (FileExistsError, NotADirectoryError)):  # what mkdir(exist_ok=True) says of a file
        reason += " (a file stands where a folder is needed: choose another path)"
    return f"{error.filename}: {reason}" if error.filename else reason


class CommandParser(argparse.ArgumentParser):
    """argparse with its errors on one line that names the option and points to --help (argparse's own prints the
    whole usage first: 30 lines for reconstruct, with the error last)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def module_doc(name: str) -> str:
    """A module's docstring, read from its source without importing it: a parser that shows the benchmark
    protocols' descriptions must not pay for their imports (torch, pycolmap) before it knows the options."""
    spec = importlib.util.find_spec(name)
    source = spec.loader.get_source(name) if spec is not None and spec.loader is not None else None
    if source is None:
        raise D2sfmError(f"{name}: module not found; reinstall d2sfm (pip install -e .)")
    return ast.get_docstring(ast.parse(source), clean=False) or ""


@contextlib.contextmanager
def loading_the_work() -> Iterator[None]:
    """Around a command's import of the modules that do its work (torch, pycolmap), made after its options are
    checked: a library that cannot be loaded there is an installation problem, said in one line as such, not a
    folder or disk error for the user to fix (which is how ``run_main`` reads any other OSError)."""
    try:
        yield
    except (ImportError, OSError) as error:
        raise D2sfmError(f"d2sfm's libraries could not be loaded ({error}); reinstall them in this environment: "
                         'python -m pip install -e "." (README, "Set up")') from error
