"""A writer thread: results are written while the next batch is being computed, not after it.

The queue is bounded, so a slow disk slows the producer down instead of filling memory. Errors in the thread are
raised in the producer at the next ``put`` or at ``close``; ``close`` (also on Ctrl-C) writes everything already
queued first, so no finished result is lost.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from d2sfm.runtime.stage_clock import StageClock

_DONE = object()


class BackgroundWriter:
    """Calls ``write(*item)`` for every ``put(*item)``, in order, in one background thread."""

    def __init__(self, write: Callable[..., None], max_pending: int = 16, clock: StageClock | None = None,
                 stage: str = "writing") -> None:
        self.write, self.clock, self.stage = write, clock, stage
        self.items: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None  # the first write error: no write happens after it
        self.reported = False
        self.thread = threading.Thread(target=self._run, name="d2sfm-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.items.get()) is not _DONE:
            if self.error is not None:
                continue  # drain without writing after a failure; the producer is told at its next call
            start = time.perf_counter()
            try:
                self.write(*item)
            except BaseException as error:  # handed to the producer thread
                self.error = error
            if self.clock is not None:
                self.clock.add(self.stage, time.perf_counter() - start)

    def _raise_if_failed(self) -> None:
        if self.error is not None and not self.reported:
            self.reported = True
            raise self.error

    def put(self, *item) -> None:
        self._raise_if_failed()
        self.items.put(item)

    def close(self) -> None:
        """Write what is queued, stop the thread, and raise the first write error if there was one."""
        if self.thread.is_alive():
            self.items.put(_DONE)
            self.thread.join()
        self._raise_if_failed()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception (or Ctrl-C) is already on its way: write what is queued, without hiding it
            self.close()
        except Exception:
            pass
