"""Named pipeline stages that are skipped once their output is complete, with their times recorded."""

from __future__ import annotations

import time
from collections.abc import Callable


class Stages:
    """Runs named stages, skipping those whose output is complete, and records their times."""

    def __init__(self, previous_times: dict | None = None) -> None:
        self.times = dict(previous_times or {})

    def run(self, name: str, done: bool, work: Callable[[], None]) -> None:
        if done:
            print(f"[{name}] done earlier, skipped")
            return
        print(f"[{name}]")
        start = time.perf_counter()
        work()
        self.times[name] = round(time.perf_counter() - start, 2)
