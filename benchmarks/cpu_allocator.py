"""glibc's malloc on the CPU: ``python -m d2sfm.extract`` with its defaults (freed memory kept, a 1 GiB top pad:
d2sfm/runtime/allocator.py) against glibc's own behaviour (``D2SFM_KEEP_FREED_MEMORY=0``), side by side in one run.

    python benchmarks/cpu_allocator.py                                  # 4 photos at 640 px, SS and MS, both convs
    python benchmarks/cpu_allocator.py --count 3 --max-edge 1600 --cases SS-exact

Each case runs the two settings alternately ``--repeats`` times (3 by default), each command in its own process
timed from start to exit; the table gives medians of the wall time, the CPU time the kernel spent for the process
(page faults of freshly mapped memory show up there) and peak resident memory (of the command's main process),
and the ratios. The two settings' features must be equal bit for bit (only where memory comes from changes),
which the script checks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.extract_command import prepare_photos  # noqa: E402
from benchmarks.paths import REPO, SACRE_COEUR, WEIGHTS  # noqa: E402
from d2sfm.runtime.allocator import ENVIRONMENT, glibc_version, memory_limited  # noqa: E402

CASES = {"SS-exact": ("--conv", "exact"), "MS-exact": ("--multiscale", "--conv", "exact"),
         "SS-winograd": ("--conv", "winograd"), "MS-winograd": ("--multiscale", "--conv", "winograd")}
SETTINGS = {"glibc default": "0", "d2sfm (kept)": "1"}


def run_once(photos: Path, output: Path, case: tuple[str, ...], keep: str, max_edge: int) -> dict:
    """One extract command; wall seconds, user and kernel CPU seconds and peak RSS (MiB) from its rusage."""
    output.unlink(missing_ok=True)
    command = [sys.executable, "-m", "d2sfm.extract", str(photos), "-o", str(output), "--max-edge", str(max_edge),
               "--quiet", "--weights", str(WEIGHTS), *case]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: nobody reads a pipe while wait4 waits
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, ENVIRONMENT: keep},
                                   stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        wall = time.perf_counter() - started
        if process.returncode:
            errors.seek(0)
            raise SystemExit(f"error: {' '.join(command)} failed: {errors.read().decode().strip()}")
    return {"wall": wall, "user": usage.ru_utime, "kernel": usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024}


def same_features(path_a: Path, path_b: Path) -> bool:
    from d2sfm.io.h5 import list_entries, read_features

    names = list_entries(path_a)
    if names != list_entries(path_b):
        return False
    for name in names:
        a, b = read_features(path_a, name), read_features(path_b, name)
        if not all(np.array_equal(getattr(a, field), getattr(b, field))
                   for field in ("keypoints", "scores", "descriptors")):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--max-edge", type=int, default=640)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if glibc_version() is None:
        raise SystemExit("error: this process does not run on glibc: the setting measured here does not apply")
    if memory_limited():
        raise SystemExit("error: this shell limits memory (ulimit -v or -d), where d2sfm leaves malloc as it is: "
                         "run the benchmark without the limit")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photos = scratch / "photos"
        prepare_photos(args.images, photos, args.count, args.max_edge)
        print(f"{args.count} photos at {args.max_edge} px, `python -m d2sfm.extract` from start to exit, median of "
              f"{args.repeats} runs of each setting, alternating; {os.cpu_count()} CPUs, glibc {glibc_version()}\n")
        print("| case | setting | wall (s) | kernel CPU (s) | user CPU (s) | peak RSS (MiB) | wall ratio | equal |")
        print("|---|---|---|---|---|---|---|---|")
        for case in args.cases:
            runs = {setting: [] for setting in SETTINGS}
            for _ in range(args.repeats):
                for setting, keep in SETTINGS.items():
                    runs[setting].append(run_once(photos, scratch / f"{keep}.h5", CASES[case], keep, args.max_edge))
            equal = same_features(scratch / "0.h5", scratch / "1.h5")
            medians = {setting: {key: statistics.median(run[key] for run in rows) for key in rows[0]}
                       for setting, rows in runs.items()}
            baseline = medians["glibc default"]["wall"]
            for setting, figures in medians.items():
                print(f"| {case} | {setting} | {figures['wall']:.1f} | {figures['kernel']:.1f} | "
                      f"{figures['user']:.1f} | {figures['rss_mib']:.0f} | {figures['wall'] / baseline:.2f} | "
                      f"{'yes' if equal else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
