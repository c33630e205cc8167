"""Does a large job stay bounded? ``python -m d2sfm.reconstruct --pairs retrieval`` on 250, 500 and 1,000 views of
the synthetic courtyard, then a run killed with SIGKILL during extraction and again during matching.

    python benchmarks/large_scene.py --counts 250 500 1000 --kill-count 1000
    python benchmarks/large_scene.py --counts 250 500 --compare-mappers

Renders ``max(counts)`` views once (``d2sfm.synthetic`` layout 'rings', small images) and makes each smaller scene
from evenly spaced views of it, so every scene is the same courtyard seen from the same arcs, more or less densely.
For each scene it prints the time and the peak resident memory of every stage (from the command's stats.json) and
of the whole command, the registered images and the camera errors against the rendered truth, and how time and
memory grow with the number of images. The kill test then runs the command on a fresh copy of the
``--kill-count`` scene, kills it halfway through extraction (by the clean run's stage times), reruns it, kills it
halfway through matching, and reruns it to the end: each rerun must start from exactly the images and pairs the
killed run had written, and the final features and matches must equal the clean run's. ``--compare-mappers`` maps
each scene again with ``--mapper global`` from a copy of the clean run's folder (features, matches, database and
refined keypoints are reused: mapping and the model refinement run again) and prints both mappers side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pycolmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, WEIGHTS  # noqa: E402
from d2sfm.evaluation.ground_truth import demo_check  # noqa: E402
from d2sfm.io.h5 import list_entries, read_features
from d2sfm.io.matches_h5 import MatchWriter, read_matches
from d2sfm.synthetic.scene import render_scene  # noqa: E402

STAGES = ("extract", "pairs", "match", "database", "refine", "mapping", "refine-model")


def full_scene(work: Path, count: int, width: int, height: int) -> Path:
    scene = work / f"render_{count}"
    if not (scene / "ground_truth").is_dir():
        print(f"rendering {count} views into {scene}", file=sys.stderr)
        render_scene(scene, count, width, height, focal=0.8 * width, layout="rings", progress=True)
    return scene


def subset_scene(full: Path, count: int, scene: Path) -> Path:
    """``scene/images`` holding ``count`` evenly spaced views of ``full`` (hard links, no copies)."""
    names = sorted(p.name for p in (full / "images").iterdir())
    chosen = [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]
    (scene / "images").mkdir(parents=True, exist_ok=True)
    for name in chosen:
        target = scene / "images" / name
        if not target.exists():
            os.link(full / "images" / name, target)
    return scene


def run_command(scene: Path, options: list[str], kill_at: tuple[str, float] | None = None) -> dict:
    """Run reconstruct on ``scene``; with ``kill_at`` (stage, seconds) SIGKILL it that long after the stage
    starts. Returns its exit status, wall time, peak memory of the whole process and its standard output."""
    command = [sys.executable, "-m", "d2sfm.reconstruct", str(scene), *options, "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines, timer = [], None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        print(f"    {line.rstrip()}", file=sys.stderr)
        if kill_at and line.strip() == f"[{kill_at[0]}]":
            timer = threading.Timer(kill_at[1], os.kill, (process.pid, signal.SIGKILL))
            timer.start()
    if timer:
        timer.join()  # the pid stays ours until it is waited for below
    _, status, _ = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": process.returncode, "seconds": time.perf_counter() - start, "stdout": lines}


def measure(scene: Path, options: list[str], truth: Path) -> dict:
    """Run (or with an earlier run's ``measured.json`` in ``scene``, reuse) the command and read its results."""
    record = scene / "measured.json"
    if record.is_file():
        result = json.loads(record.read_text())
    else:
        result = run_command(scene, options)
        if result["returncode"]:
            raise SystemExit(f"reconstruct failed on {scene} (exit {result['returncode']})")
        record.write_text(json.dumps(result))
    stats = json.loads((scene / "stats.json").read_text())
    model = pycolmap.Reconstruction(scene / "sparse" / "0")
    return {**result, "stats": stats, "check": demo_check(model, truth)}


def counted(lines: list[str], pattern: str) -> tuple[int, int]:
    for line in lines:
        found = re.match(pattern, line.strip())
        if found:
            return int(found.group(1)), int(found.group(2))
    raise SystemExit(f"no line matching {pattern!r} in the command's output")


def same_features(a: Path, b: Path) -> bool:
    names = list_entries(a)
    if sorted(names) != sorted(list_entries(b)):
        return False
    for name in names:
        fa, fb = read_features(a, name), read_features(b, name)
        if not (np.array_equal(fa.keypoints, fb.keypoints) and np.array_equal(fa.descriptors, fb.descriptors)):
            return False
    return True


def same_matches(a: Path, b: Path, pairs: list[tuple[str, str]]) -> bool:
    return all(np.array_equal(read_matches(a, *pair)[0], read_matches(b, *pair)[0]) for pair in pairs)


def kill_test(clean: Path, scene: Path, options: list[str]) -> list[str]:
    """The SIGKILL test on a fresh copy of ``clean``'s photos; returns the report's lines."""
    times = json.loads((clean / "stats.json").read_text())["stage_seconds"]
    total = len(list((scene / "images").iterdir()))
    report = []
    first = run_command(scene, options, ("extract", times["extract"] / 2))
    kept_images = len(list_entries(scene / "features.h5"))
    report.append(f"- run 1 killed (exit {first['returncode']}) {times['extract'] / 2:.0f} s into extraction: "
                  f"features.h5 holds {kept_images} of {total} images")
    second = run_command(scene, options, ("match", times["match"] / 2))
    todo, earlier = counted(second["stdout"], r"(\d+) image\(s\) to extract, (\d+) done earlier")
    exact = earlier == kept_images and todo == total - kept_images
    report.append(f"- run 2 found {earlier} images done earlier and extracted {todo} "
                  f"({'nothing lost or redone' if exact else 'MISMATCH'}); killed (exit {second['returncode']}) "
                  f"{times['match'] / 2:.0f} s into matching")
    kept_pairs = len(MatchWriter(scene / "matches.h5").done)
    third = run_command(scene, options)
    todo_pairs, earlier_pairs = counted(third["stdout"], r"(\d+) pair\(s\) to match, (\d+) matched earlier")
    report.append(f"- matches.h5 held {kept_pairs} pairs after the kill; run 3 found {earlier_pairs} matched earlier "
                  f"and matched {todo_pairs} "
                  f"({'nothing lost or redone' if earlier_pairs == kept_pairs else 'MISMATCH'}); exit "
                  f"{third['returncode']}")
    pairs = [tuple(line.split()) for line in (clean / "pairs.txt").read_text().splitlines() if line.strip()]
    features_equal = same_features(clean / "features.h5", scene / "features.h5")
    report.append(f"- final features.h5 equal to the clean run's: {features_equal}; matches.h5 equal on all "
                  f"{len(pairs)} pairs: "
                  f"{same_matches(clean / 'matches.h5', scene / 'matches.h5', pairs)}")
    return report


def measure_global(scene: Path, options: list[str], truth: Path, keep: bool) -> dict:
    """The clean run's folder copied and mapped again with --mapper global: the stage records make the rerun redo
    mapping and the model refinement only."""
    copy = scene.with_name(scene.name + "_global")
    if not keep:
        shutil.rmtree(copy, ignore_errors=True)
    if not copy.is_dir():
        shutil.copytree(scene, copy, ignore=shutil.ignore_patterns("measured.json"))
    print(f"== {copy.name}: --mapper global", file=sys.stderr)
    return measure(copy, [*options, "--mapper", "global"], truth)


def print_mapper_table(rows: list[dict]) -> None:
    """Incremental against global mapping of the same database, per scene, with the ratios."""
    print("\nThe same databases mapped by each mapper (`--mapper incremental`, the default, against `--mapper global`; "
          "the model refinement runs on each mapper's model):\n")
    header = ["images", "mapper", "mapping s / MiB", "refine-model s / MiB", "registered", "3D points",
              "median / max rotation error (deg)", "median / max position error (% of scene)"]
    print("| " + " | ".join(header) + " |")
    print("|---:|---|" + "---:|" * (len(header) - 2))
    for row in rows:
        for mapper, result in (("incremental", row), ("global", row["global"])):
            stats, check = result["stats"], result["check"]
            cells = [row["count"], mapper]
            cells += [f"{stats['stage_seconds'][s]:.0f} / {stats['stage_peak_memory_mb'][s]:.0f}"
                      for s in ("mapping", "refine-model")]
            cells += [check["registered"], stats["models"][0]["points3D"]]
            cells += [f"{check['median_rotation_error_deg']:.3f} / {check['max_rotation_error_deg']:.3f}",
                      f"{100 * check['median_position_error_rel']:.3f} / {100 * check['max_position_error_rel']:.3f}"]
            print("| " + " | ".join(str(c) for c in cells) + " |")
    for row in rows:
        incremental, global_ = row["stats"]["stage_seconds"], row["global"]["stats"]["stage_seconds"]
        both = [times["mapping"] + times["refine-model"] for times in (incremental, global_)]
        print(f"\n{row['count']} images: global mapping takes {global_['mapping'] / incremental['mapping']:.2f}x the "
              f"incremental mapper's time, mapping and model refinement together {both[1] / both[0]:.2f}x.")


def growth(rows: list[dict], key) -> str:
    first, last = rows[0], rows[-1]
    return f"{key(last) / key(first):.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--kill-count", type=int, default=None,
                        help="run the kill test on this scene (one of --counts)")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "large_scene")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--compare-mappers", action="store_true",
                        help="also map every scene with --mapper global (from a copy of the clean run) and compare")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the scenes an earlier run measured (their measured.json) instead of starting over")
    args = parser.parse_args()
    counts = sorted(args.counts)
    full = full_scene(args.work, counts[-1], args.width, args.height)
    options = ["--pairs", "retrieval", "--single-scale", "--camera-mode", "single", "--camera-model", "PINHOLE",
               "--mapper-attempts", "1", "--weights", args.weights]
    rows = []
    for count in counts:
        scene = args.work / f"scene_{count}"
        if not args.keep:
            shutil.rmtree(scene, ignore_errors=True)
        print(f"== {count} images", file=sys.stderr)
        rows.append({"count": count, **measure(subset_scene(full, count, scene), options, full / "ground_truth")})
        if args.compare_mappers:
            rows[-1]["global"] = measure_global(scene, options, full / "ground_truth", args.keep)
    print(f"`python -m d2sfm.reconstruct SCENE {' '.join(options)}` on views of {args.width}x{args.height} px "
          "(single-scale D2, retrieval pairs, top 20 per image); peak memory is the resident memory of the "
          "command's process during each stage (the image loader process is not included).\n")
    header = ["images", "pairs", *[f"{stage} s / MiB" for stage in STAGES], "all stages s / command peak MiB",
              "registered", "median / max rotation error (deg)", "median / max position error (% of scene)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for row in rows:
        stats, check = row["stats"], row["check"]
        cells = [row["count"], stats["pairs"]]
        cells += [f"{stats['stage_seconds'][s]:.0f} / {stats['stage_peak_memory_mb'][s]:.0f}" for s in STAGES]
        # the command's peak is its stages' largest: each stage restarts the kernel's high-water mark, which also
        # resets what wait4 reports for the whole process (it would give the last stages' peak)
        peak = max(stats["stage_peak_memory_mb"].values())
        cells += [f"{sum(stats['stage_seconds'][s] for s in STAGES):.0f} / {peak:.0f}",
                  check["registered"]]
        cells += [f"{check['median_rotation_error_deg']:.3f} / {check['max_rotation_error_deg']:.3f}",
                  f"{100 * check['median_position_error_rel']:.3f} / {100 * check['max_position_error_rel']:.3f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if len(rows) > 1:
        print(f"\nFrom {rows[0]['count']} to {rows[-1]['count']} images ({rows[-1]['count'] / rows[0]['count']:.0f}x): "
              + ", ".join(f"{stage} time {growth(rows, lambda r, s=stage: r['stats']['stage_seconds'][s])}"
                          for stage in ("extract", "match", "database", "refine", "mapping", "refine-model"))
              + "; peak memory " + ", ".join(
                  f"{stage} {growth(rows, lambda r, s=stage: r['stats']['stage_peak_memory_mb'][s])}"
                  for stage in STAGES) + ".")
    if args.compare_mappers:
        print_mapper_table(rows)
    if args.kill_count:
        clean = args.work / f"scene_{args.kill_count}"
        killed = args.work / f"killed_{args.kill_count}"
        shutil.rmtree(killed, ignore_errors=True)
        subset_scene(full, args.kill_count, killed)
        print(f"\nSIGKILL test on {args.kill_count} images:\n")
        print("\n".join(kill_test(clean, killed, options)))


if __name__ == "__main__":
    main()
