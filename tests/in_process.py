"""Running a d2sfm command's ``main`` the way ``python -m`` does, inside the test process."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess


def command_in_process(module: str, *args) -> subprocess.CompletedProcess:
    """The command's own ``main`` under ``cli.run_main`` (what ``python -m`` runs), in this process: for the runs
    of a test that do not need a process of their own, where a fresh interpreter would cost 2-4 s of imports and
    warm-up each. A test file keeps a fresh ``python -m`` process for its first run and for what only a whole
    process shows (signals, kills, the libraries' own stderr lines, environment variables): only Python's
    ``sys.stdout`` and ``sys.stderr`` are captured here, COLMAP's and OpenCV's C++ log lines are not, and an
    uncaught exception propagates to the test instead of being printed.
    What ``run_main`` changes for the process (the SIGTERM handler, d2sfm's console handler, the library log
    settings it puts in the environment for child processes) is put back."""
    from d2sfm.commands.cli import run_main
    from d2sfm.runtime.allocator import ENVIRONMENT

    main = importlib.import_module(f"d2sfm.commands.{module.removeprefix('d2sfm.')}").main
    logger = logging.getLogger("d2sfm")
    handlers, level, sigterm = list(logger.handlers), logger.level, signal.getsignal(signal.SIGTERM)
    environment = dict(os.environ)
    # run_main would set glibc's top pad for the rest of this test process (d2sfm.runtime.allocator): the tests
    # that follow in it must see malloc as pytest started it, whatever order the files run in (this holds while no
    # test calls keep_freed_memory in the test process itself: its answer is kept for the process)
    os.environ[ENVIRONMENT] = "0"
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_main(main, [str(arg) for arg in args])
                status = 0
            except SystemExit as stop:
                status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        signal.signal(signal.SIGTERM, sigterm)
        os.environ.clear()
        os.environ.update(environment)
    return subprocess.CompletedProcess([module, *map(str, args)], status, out.getvalue(), err.getvalue())
