"""Extraction and matching on a local Ray cluster with 1, 2, ... workers against the single-process commands.

    python benchmarks/cluster_scaling.py --count 48 --workers 1 2            # CPU: one CPU per worker
    python benchmarks/cluster_scaling.py --device cuda --workers 1            # one worker per GPU

Runs, in one go and on the same photos (the shared Sacre Coeur photos, repeated under new names up to ``--count``):
``python -m d2sfm.extract`` and ``python -m d2sfm.match`` (exhaustive pairs) in one process (with every core, and
on the CPU also with one thread, the size of one worker), then the same commands with ``--ray --ray-workers K``.
Times are whole commands, start-up included (Ray's start and each worker's loading of the network are part of what
a user waits for; they are also printed alone). Efficiency is the rate of K workers over K times the rate of one
single-threaded process (on the GPU: over K times the single-process command).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR, WEIGHTS  # noqa: E402
from d2sfm.io.h5 import list_entries
from d2sfm.io.images import list_images  # noqa: E402
from d2sfm.matching.pairs import exhaustive_pairs, write_pairs  # noqa: E402


def repeated_photos(source: Path, count: int, folder: Path) -> Path:
    """``count`` photos named ``k_<name>``, linking the source photos over and over."""
    names = list_images(source)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = names[index % len(names)]
        os.symlink(source / name, folder / f"{index // len(names):02d}_{Path(name).name}")
    return folder


def timed_run(command: list[str], threads: int | None = None) -> float:
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *command, "--quiet"], capture_output=True, text=True,
                            env=environment, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"{' '.join(command[:1])} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def ray_start_up(workers: int, device: str) -> float:
    """Seconds to start a local Ray and ``workers`` actors that load the network (what every --ray run pays)."""
    code = ("import time, ray, torch; s = time.perf_counter(); ray.init(include_dashboard=False, "
            "logging_level='ERROR', log_to_driver=False)\n"
            "@ray.remote(num_cpus=1, num_gpus=%d)\nclass A:\n    def ready(self):\n"
            "        from d2sfm.features.network import D2Net; D2Net(); return 1\n"
            "ray.get([a.ready.remote() for a in [A.remote() for _ in range(%d)]]); print(time.perf_counter() - s)"
            % (1 if device == "cuda" else 0, workers))
    try:  # an actor the cluster cannot place (no GPU seen) would wait for ever
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    except subprocess.TimeoutExpired:
        return float("nan")
    return float(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--count", type=int, default=48, help="photos (default 48)")
    parser.add_argument("--max-edge", type=int, default=640)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--weights", default=str(WEIGHTS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cluster_scaling_"))
    photos = repeated_photos(args.images, args.count, work / "images")
    extract = ["d2sfm.extract", str(photos), "--max-edge", str(args.max_edge), "--weights", args.weights,
               "--device", args.device]
    rows = []  # (label, workers, extract seconds, match seconds)

    def measure(label: str, workers: int, extra: list[str], threads: int | None = None) -> None:
        features = work / f"features_{len(rows)}.h5"
        extract_seconds = timed_run([*extract, "-o", str(features), *extra], threads)
        if not (work / "pairs.txt").is_file():
            write_pairs(work / "pairs.txt", exhaustive_pairs(sorted(list_entries(features))))
        match_seconds = timed_run(["d2sfm.match", str(features), str(work / "pairs.txt"), "-o",
                                   str(work / f"matches_{len(rows)}.h5"), "--device", args.device, *extra], threads)
        rows.append((label, workers, extract_seconds, match_seconds))
        print(f"  {label}: extract {extract_seconds:.1f} s, match {match_seconds:.1f} s", file=sys.stderr)

    cores = os.cpu_count() or 1
    measure(f"single process ({'GPU' if args.device == 'cuda' else f'{cores} threads'})", 1, [])
    if args.device == "cpu":
        measure("single process (1 thread)", 1, [], threads=1)
    for workers in args.workers:
        measure(f"Ray, {workers} worker{'s' * (workers > 1)}", workers, ["--ray", "--ray-workers", str(workers)])
    pair_count = len((work / "pairs.txt").read_text().splitlines())
    base = rows[1] if args.device == "cpu" else rows[0]
    print(f"{args.count} photos at {args.max_edge} px, single-scale; {pair_count} exhaustive pairs. Whole commands, "
          f"start-up included; efficiency = rate / (workers x rate of '{base[0]}').\n")
    print("| run | extraction s | images/s | efficiency | matching s | pairs/s | efficiency |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, workers, extract_seconds, match_seconds in rows:
        image_rate, pair_rate = args.count / extract_seconds, pair_count / match_seconds
        image_efficiency = image_rate / (workers * args.count / base[2])
        pair_efficiency = pair_rate / (workers * pair_count / base[3])
        print(f"| {label} | {extract_seconds:.1f} | {image_rate:.2f} | {image_efficiency:.2f} | {match_seconds:.1f} "
              f"| {pair_rate:.0f} | {pair_efficiency:.2f} |")
    print("\nStarting a local Ray and its workers (network loaded), alone: "
          + ", ".join(f"{w} worker{'s' * (w > 1)} {ray_start_up(w, args.device):.1f} s" for w in args.workers) + ".")


if __name__ == "__main__":
    main()
