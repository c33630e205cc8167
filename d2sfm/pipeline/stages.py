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

from d2sfm.errors import D2sfmError, some_names
from d2sfm.io.atomic import write_text_atomic
from d2sfm.runtime.allocator import release_freed_memory
from d2sfm.runtime.run_lock import is_housekeeping

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


# What the pipelines write into a run folder besides its record (names a pipeline asks of ``RunFolder.path`` are
# remembered in the record as well): what --overwrite deletes, with the siblings of these names that d2sfm's
# atomic writes, folder swaps, Ray shards and SQLite leave (``OUTPUT_SIDE_SUFFIXES``), and nothing else.
RUN_OUTPUTS = frozenset({
    "features.h5", "pairs.txt", "matches.h5", "database.db", "sparse", "sparse-empty", "sparse-database",
    "sparse-final", "dense", "model.png", "registration.json", "summary.json", "poses.txt", "ground_truth_poses.txt",
    "refined_keypoints.h5", "localization.json", "refined_queries.h5", "Aachen_eval_[d2sfm].txt",
    "Aachen_v1_1_eval_[d2sfm].txt", "InLoc_eval_[d2sfm].txt"})
OUTPUT_SIDE_SUFFIXES = (".part", ".old", ".shards", "-wal", "-shm", "-journal")
WRITTEN_KEY = "written_outputs"  # the record's list of the names a pipeline asked RunFolder.path for


def _written_by_d2sfm(name: str, known: set[str]) -> bool:
    """Whether an entry of a run folder is d2sfm's: a known output, its lock, or what a write of one leaves."""
    if name in known or is_housekeeping(name):
        return True
    return any(name.endswith(suffix) and name[:-len(suffix)] in known for suffix in OUTPUT_SIDE_SUFFIXES)


def _holding(paths: list[Path]) -> str:
    return some_names([path.name + ("/" if path.is_dir() else "") for path in paths])


def clear_run_folder(output: Path, record: str) -> None:
    """``overwrite``: delete what d2sfm wrote in ``output`` (the record, the pipelines' outputs, what killed writes
    left) and keep anything else. A non-empty folder without the record is no d2sfm run folder (a user's folder, a
    reconstructed scene given as a localization's output): it is refused before anything is deleted."""
    if not output.exists():
        return
    if not output.is_dir():
        raise D2sfmError(f"{output}: is a file, not a folder; choose a folder for the output")
    entries = sorted(output.iterdir())
    record_path = output / record
    if not record_path.is_file():  # a first run killed before its first stage finished left d2sfm's names only
        foreign = [path for path in entries if not _written_by_d2sfm(path.name, set(RUN_OUTPUTS))]
        if foreign:
            raise D2sfmError(f"{output}: not a d2sfm output folder (it holds {_holding(foreign)}); choose an empty or "
                             "new folder")
    try:
        written = read_record(record_path).get(WRITTEN_KEY) or []
    except D2sfmError:  # a damaged record: what the pipelines write is still known
        written = []
    known = set(RUN_OUTPUTS) | {record} | {str(name) for name in written if isinstance(name, str)}
    kept = []
    for path in entries:
        if not _written_by_d2sfm(path.name, known):
            kept.append(path)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if kept:
        log.info(f"  kept what d2sfm did not write in {output}: {_holding(kept)}")


class RunFolder:
    """The one stage runner of every pipeline (reconstruct, localize, evaluate): an output folder with its record
    (``stats.json`` of a scene, ``state.json`` of the other pipelines) that holds each finished stage's time and
    peak memory and the facts later stages need, written atomically after every stage, so that a rerun skips what
    is done and resumes where the last run stopped. ``overwrite`` first deletes what d2sfm wrote there and nothing
    else (``clear_run_folder``: a folder that is not a d2sfm run folder is refused); ``carried``: the keys of the
    earlier record a rerun starts from (the rest is this run's to write; None keeps all)."""

    def __init__(self, output: Path, overwrite: bool = False, record: str = "state.json",
                 carried: tuple[str, ...] | None = None) -> None:
        if overwrite:
            clear_run_folder(output, record)
        elif output.exists() and not output.is_dir():
            raise D2sfmError(f"{output}: is a file, not a folder; choose a folder for the output")
        output.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.state_path = output / record
        previous = read_record(self.state_path)
        self.written = {name for name in previous.get(WRITTEN_KEY) or [] if isinstance(name, str)}
        self.state = previous if carried is None else {key: previous[key] for key in carried if key in previous}
        self.state.pop(WRITTEN_KEY, None)
        self.stages = Stages(previous.get("stage_seconds"), previous.get("stage_peak_memory_mb"), self.save)

    def path(self, name: str) -> Path:
        """``output/name``, remembered in the record as d2sfm's (what ``overwrite`` may delete)."""
        self.written.add(Path(name).parts[0])
        return self.output / name

    def save(self, **updates) -> None:
        self.state.update(updates, stage_seconds=self.stages.times, stage_peak_memory_mb=self.stages.peak_memory_mb)
        record = {**self.state, WRITTEN_KEY: sorted(self.written)} if self.written else self.state
        write_text_atomic(self.state_path, json.dumps(record, indent=2))
