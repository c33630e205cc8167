"""Is a refactoring invisible? ``python -m d2sfm.reconstruct`` at a git revision and in this working tree, on the
same photos, side by side: every statistic of stats.json but the times and memory, and the console output with
its numbers masked, must be the same.

    python benchmarks/same_statistics.py --base 9e3d12e --demo                       # the demo scene
    python benchmarks/same_statistics.py --base 9e3d12e --images ../shared/data/sacre_coeur/images

The base revision is checked out with ``git worktree`` into a temporary folder and run from there (its own code,
this interpreter and its packages). Prints a table of the statistics and, last, SAME or DIFFERENT. Times are
printed too (base, ours, ratio), but are not what is compared. Mapping is multithreaded: where a model's numbers
differ, the row says so and it is rerun to tell a change from run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, WEIGHTS

TIMING_KEYS = {"stage_seconds", "stage_peak_memory_mb", "seconds", "adjust_seconds", "patch_seconds"}


def without_timings(value):
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def run(code: Path, scene: Path, arguments: list[str]) -> tuple[dict, str]:
    environment = {**os.environ, "PYTHONPATH": str(code), "D2SFM_WEIGHTS": os.environ.get("D2SFM_WEIGHTS",
                                                                                           str(WEIGHTS))}
    result = subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--quiet", *arguments],
                            capture_output=True, text=True, cwd=code, env=environment)
    if result.returncode:
        raise SystemExit(f"error: reconstruct in {code} failed:\n{result.stderr[-2000:]}")
    console = re.sub(r"\d+(\.\d+)?", "N", result.stdout.replace(str(scene), "SCENE"))
    return json.loads((scene / "stats.json").read_text()), console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare with (e.g. 9e3d12e)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="the embedded demo scene (rendered once, 12 views)")
    source.add_argument("--images", type=Path, help="a folder of photos")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("arguments", nargs="*", help="more options for reconstruct (after --)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="d2sfm-same-"))
    base_code = work / "base"
    if not base_code.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(base_code), args.base], cwd=REPO, check=True,
                       capture_output=True)
    results = {}
    for label, code in (("base", base_code), ("ours", REPO)):
        scene = work / label
        shutil.rmtree(scene, ignore_errors=True)
        scene.mkdir(parents=True)
        if args.images:
            shutil.copytree(args.images, scene / "images")
        arguments = ["--demo"] * args.demo + args.arguments
        results[label] = run(code, scene, arguments)
    (base_stats, base_console), (our_stats, our_console) = results["base"], results["ours"]
    same_stats = without_timings(base_stats) == without_timings(our_stats)
    print(f"| statistic | {args.base} | this tree |\n| --- | --- | --- |")
    for index, (base_model, our_model) in enumerate(zip(base_stats["models"], our_stats["models"])):
        for key in base_model:
            print(f"| model {index}: {key} | {base_model[key]} | {our_model.get(key)} |")
    print(f"| verification | {base_stats['verification']} | {our_stats['verification']} |")
    if "demo_check" in base_stats:
        for key in ("registered", "max_rotation_error_deg", "max_position_error_rel"):
            print(f"| demo check: {key} | {base_stats['demo_check'][key]} | {our_stats['demo_check'][key]} |")
    base_time, our_time = sum(base_stats["stage_seconds"].values()), sum(our_stats["stage_seconds"].values())
    print(f"| stage seconds, total | {base_time:.1f} | {our_time:.1f} (x{our_time / base_time:.2f}) |")
    print(f"\nstatistics (times and memory aside): {'same' if same_stats else 'DIFFERENT'}; console (numbers "
          f"masked): {'same' if base_console == our_console else 'DIFFERENT'}")
    if not same_stats:
        for key in base_stats:
            if without_timings(base_stats[key]) != without_timings(our_stats.get(key)):
                print(f"  differs: {key}")
    print("SAME" if same_stats and base_console == our_console else "DIFFERENT")
    subprocess.run(["git", "worktree", "remove", "--force", str(base_code)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
