"""Named pipeline stages that are skipped once their output is complete, with their times and peak memory recorded,
and the output folder that remembers them between runs."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import write_text_atomic
from d2sfm.runtime.allocator import release_freed_memory

log = logging.getLogger("d2sfm")


def resident_memory_mb() -> float:
    """This process's resident memory now, in MiB (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_BYTES / 2**20
    except OSError:
        return 0.0


def peak_memory_mb() -> float:
    """This process's peak resident memory since it started, in MiB (Linux's VmHWM, what /usr/bin/time reports)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


PAGE_BYTES = resource.getpagesize()


class PeakMemory:
    """The peak resident memory of this process while a block runs, without resetting the process's own peak
    (which ``/usr/bin/time`` and other tools read): where the block raised the process's peak, that peak is exact;
    otherwise the largest of readings taken every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.sampled = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.sampled = max(self.sampled, resident_memory_mb())

    def __enter__(self) -> PeakMemory:
        release_freed_memory()  # what an earlier block freed but malloc kept is not this block's
        self.before = peak_memory_mb()
        self.sampled = resident_memory_mb()
        self._thread = threading.Thread(target=self._sample, name="d2sfm-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        after = peak_memory_mb()
        self.peak_mb = after if after > self.before else max(self.sampled, resident_memory_mb())


class Stages:
    """Runs named stages, skipping those whose output is complete, and records their times and the peak resident
    memory of this process during each (helper processes such as image loaders are not included)."""

    def __init__(self, previous_times: dict | None = None, previous_peaks: dict | None = None,
                 on_finished: Callable[[], None] | None = None) -> None:
        self.times = dict(previous_times or {})
        self.peak_memory_mb = dict(previous_peaks or {})
        self.on_finished = on_finished  # called after each stage that ran: save what a rerun needs to skip it

    def run(self, name: str, done: bool, work: Callable[[], None], skipped_because: str = "done earlier") -> None:
        if done:
            log.info(f"[{name}] {skipped_because}, skipped")
            return
        log.info(f"[{name}]")
        start = time.perf_counter()
        with PeakMemory() as memory:
            work()
        self.times[name] = round(time.perf_counter() - start, 2)
        self.peak_memory_mb[name] = round(memory.peak_mb, 1)
        if self.on_finished:
            self.on_finished()


def read_record(path: Path) -> dict:
    """The record an earlier run left (what its finished stages produced and were run with); a damaged one is a
    one-line error, not a guess: it says which stages are finished."""
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise D2sfmError(f"{path}: damaged ({str(error).splitlines()[0]}); delete it to check every stage again "
                         "(finished outputs are kept where they are complete), or pass --overwrite") from None
    if not isinstance(previous, dict):
        raise D2sfmError(f"{path}: not a d2sfm record (a JSON object is expected); delete it, or pass --overwrite")
    return previous


class RunFolder:
    """The one stage runner of every pipeline (reconstruct, localize, evaluate): an output folder with its record
    (``stats.json`` of a scene, ``state.json`` of the other pipelines) that holds each finished stage's time and
    peak memory and the facts later stages need, written atomically after every stage, so that a rerun skips what
    is done and resumes where the last run stopped. ``overwrite`` deletes the folder first; ``carried``: the keys
    of the earlier record a rerun starts from (the rest is this run's to write; None keeps all)."""

    def __init__(self, output: Path, overwrite: bool = False, record: str = "state.json",
                 carried: tuple[str, ...] | None = None) -> None:
        if overwrite and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.state_path = output / record
        previous = read_record(self.state_path)
        self.state = previous if carried is None else {key: previous[key] for key in carried if key in previous}
        self.stages = Stages(previous.get("stage_seconds"), previous.get("stage_peak_memory_mb"), self.save)

    def path(self, name: str) -> Path:
        return self.output / name

    def save(self, **updates) -> None:
        self.state.update(updates, stage_seconds=self.stages.times, stage_peak_memory_mb=self.stages.peak_memory_mb)
        write_text_atomic(self.state_path, json.dumps(self.state, indent=2))
