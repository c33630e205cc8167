"""Named pipeline stages that are skipped once their output is complete, with their times recorded, and the
output folder that remembers them between runs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from d2sfm.fileutil import write_text_atomic


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


class RunFolder:
    """A pipeline's output folder with its ``state.json`` (stage times and facts later stages need), so that a
    rerun resumes where the last one stopped."""

    def __init__(self, output: Path, overwrite: bool = False) -> None:
        if overwrite and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.state_path = output / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.stages = Stages(self.state.get("stage_seconds"))

    def path(self, name: str) -> Path:
        return self.output / name

    def save(self, **updates) -> None:
        self.state.update(updates, stage_seconds=self.stages.times)
        write_text_atomic(self.state_path, json.dumps(self.state, indent=2))
