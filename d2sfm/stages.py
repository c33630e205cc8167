"""Named pipeline stages that are skipped once their output is complete, with their times and peak memory recorded,
and the output folder that remembers them between runs."""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from d2sfm.fileutil import write_text_atomic


def reset_peak_memory() -> bool:
    """Restart this process's peak resident memory (Linux's VmHWM) from its current size, so that the next reading
    is the peak of what runs in between; False where the kernel does not allow it (the reading is then the peak
    since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    """This process's peak resident memory in MiB (since start, or since ``reset_peak_memory``)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Stages:
    """Runs named stages, skipping those whose output is complete, and records their times and the peak resident
    memory of this process during each (helper processes such as image loaders are not included)."""

    def __init__(self, previous_times: dict | None = None, previous_peaks: dict | None = None,
                 on_finished: Callable[[], None] | None = None) -> None:
        self.times = dict(previous_times or {})
        self.peak_memory_mb = dict(previous_peaks or {})
        self.on_finished = on_finished  # called after each stage that ran: save what a rerun needs to skip it

    def run(self, name: str, done: bool, work: Callable[[], None]) -> None:
        if done:
            print(f"[{name}] done earlier, skipped")
            return
        print(f"[{name}]")
        reset_peak_memory()
        start = time.perf_counter()
        work()
        self.times[name] = round(time.perf_counter() - start, 2)
        self.peak_memory_mb[name] = round(peak_memory_mb(), 1)
        if self.on_finished:
            self.on_finished()


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
        self.stages = Stages(self.state.get("stage_seconds"), self.state.get("stage_peak_memory_mb"))

    def path(self, name: str) -> Path:
        return self.output / name

    def save(self, **updates) -> None:
        self.state.update(updates, stage_seconds=self.stages.times, stage_peak_memory_mb=self.stages.peak_memory_mb)
        write_text_atomic(self.state_path, json.dumps(self.state, indent=2))
