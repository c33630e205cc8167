"""``python -m benchmarks``: rerun every speed and memory benchmark of the project and regenerate its tables in
docs/benchmarks.md, each headed by the machine and date it ran on.

    python -m benchmarks --reference /path/to/d2-net            # everything, CPU, with the original D2-Net code
    python -m benchmarks --only match-cpu aachen-estimate        # some of them
    python -m benchmarks --device cuda --reference /path/to/d2-net   # the GPU tables (extraction, matching)
    python -m benchmarks --list

Each benchmark is a script in benchmarks/ that runs d2sfm and its baseline side by side and prints a markdown
table; its standard output replaces the block between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in
the document (a block that does not exist yet is appended). Without ``--reference`` the extraction tables have no
"original" rows. The document is rewritten atomically after each benchmark, so an interrupted run keeps the
tables it finished.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR  # noqa: E402

DOCUMENT = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    arguments: tuple[str, ...]
    device: str  # "cpu" or "cuda"
    uses_reference: bool = False
    what: str = ""


BENCHMARKS = (
    Benchmark("extract-cpu-sacre-coeur", "extract_speed.py",
              ("--images", str(SACRE_COEUR), "--max-edge", "640"), "cpu", True,
              "extraction, 10 Sacre Coeur photos at 640 px, SS and MS, exact and winograd"),
    Benchmark("extract-cpu-reference", "extract_speed.py", (), "cpu", True,
              "extraction, the two 640-px reference images"),
    Benchmark("extract-cpu-full-size", "extract_speed.py",
              ("--images", str(SACRE_COEUR), "--limit", "3"), "cpu", True,
              "extraction, 3 Sacre Coeur photos at their own size (default settings), SS and MS"),
    Benchmark("extract-command-cpu", "extract_command.py", ("--count", "12", "--max-edge", "640"), "cpu", True,
              "the whole extraction command on 12 photos at 640 px, SS and MS, against extract_features.py"),
    Benchmark("cpu-allocator", "cpu_allocator.py", (), "cpu", False,
              "the extraction command with glibc's malloc keeping freed memory (the default) against glibc's own "
              "behaviour, 4 photos at 640 px, SS and MS, exact and winograd"),
    Benchmark("feature-writing", "feature_writing.py", (), "cpu", False,
              "writing one image's features: descriptors converted to float16 by numpy in the writer against by "
              "PyTorch where they are computed"),
    Benchmark("loader-handover", "loader_handover.py", (), "cpu", False,
              "decoded photos from the loader workers to the network loop: pickled numpy against shared-memory "
              "tensors"),
    Benchmark("match-cpu", "match_speed.py", (), "cpu", False, "MNN matching, 8k and 20k features"),
    Benchmark("aachen-estimate", "aachen_estimate.py", ("--images", "2", "--pairs", "20"), "cpu", False,
              "Aachen v1.1 run-time estimate from a measured subset"),
    Benchmark("cluster-scaling-cpu", "cluster_scaling.py", ("--count", "48", "--workers", "1", "2"), "cpu", False,
              "extraction and matching on a local Ray cluster of 1 and 2 workers against the single-process commands"),
    Benchmark("shard-merge", "shard_merge.py", ("--images", "1000", "--keypoints", "1000"), "cpu", False,
              "Ray shards into one features.h5: merge against HDF5 external links"),
    Benchmark("large-scene", "large_scene.py", ("--counts", "250", "500", "1000", "--kill-count", "1000"), "cpu",
              False, "reconstruct --pairs retrieval on 250/500/1000 synthetic views: time and peak memory per stage, "
              "SIGKILL during extraction and matching (about 1.5 h on 2 cores)"),
    Benchmark("refine-sfm", "refine_sfm.py", (), "cpu", False,
              "Sacre Coeur SfM, SS and MS, unrefined, database refinement only (patch, featuremetric) and the "
              "default (patch, database and model), beside SIFT"),
    Benchmark("refine-cost", "refine_cost.py", (), "cpu", False,
              "refinement time per keypoint against photo size (640 px to 3072x2048, Herz-Jesus-P8), where it goes, "
              "baseline (every level at full size, every iteration) beside the default"),
    Benchmark("localize-strecha", "localize_strecha.py", (), "cpu", False,
              "localize images at full size on the three Strecha scenes (every other photo against a model of the "
              "rest at the true poses), query keypoints refined and not"),
    Benchmark("refine-gates", "refine_gates.py", (), "cpu", False,
              "which patch-alignment fits are trusted: correlation alone against the uncertainty gate, synthetic "
              "views against the truth and Sacre Coeur SS/MS"),
    Benchmark("refine-batching", "refine_batching.py", (), "cpu", False,
              "patch alignment batched across images against one image per batch, both refinement stages"),
    Benchmark("refine-invariance", "refine_invariance.py", (), "cpu", False,
              "patch alignment and dense features' optimum under a known homography of a real photo"),
    Benchmark("refine-picture", "refine_picture.py", (), "cpu", False,
              "before/after picture of refinement on the synthetic scene (docs/img/refine_before_after.png)"),
    Benchmark("gpu-acceptance", "gpu_acceptance.py", ("--output", str(REPO / "outputs" / "gpu-acceptance")), "cuda",
              False, "every GPU figure in one run: parity, whole-command throughput SS/MS fp32/bf16, bf16 quality, "
              "GPU matching, Ray, refinement and dense (docs/gpu.md; one call where pycolmap-cuda and Ray are "
              "installed)"),
    Benchmark("extract-gpu", "extract_speed.py",
              ("--images", str(SACRE_COEUR), "--max-edge", "1600", "--device", "cuda",
               "--precision", "fp32", "bf16", "fp16", "--original-tf32"), "cuda", True,
              "extraction at 1600 px on the GPU, fp32 against bf16 and fp16"),
    Benchmark("extract-command-gpu", "extract_command.py",
              ("--device", "cuda", "--count", "220", "--max-edge", "1600", "--reference-count", "40"), "cuda", True,
              "the whole extraction command on 220 photos at 1600 px on the GPU, fp32 and bf16"),
    Benchmark("extract-profile-gpu", "extract_profile.py", ("--device", "cuda"), "cuda", False,
              "where a batch's GPU time goes, by operator: 4 photos of 1600x1200, SS and MS, fp32 and bf16"),
    Benchmark("extract-remedies-gpu-ss", "extract_remedies.py", ("--device", "cuda", "--pyramid", "SS"), "cuda",
              False, "which GPU remedies pay, single scale: the extraction loop on 64 photos of 1600x1200, one change "
              "at a time and together (workers, pinned input, channels-last maps, bf16 maps, torch.compile, CUDA "
              "graphs), and decoding on the CPU against nvJPEG"),
    Benchmark("extract-remedies-gpu-ms", "extract_remedies.py",
              ("--device", "cuda", "--pyramid", "MS", "--count", "32"), "cuda", False,
              "which GPU remedies pay, multi-scale (32 photos of 1600x1200)"),
    Benchmark("precision-quality-gpu", "precision_quality.py", ("--device", "cuda"), "cuda", False,
              "fp32 against bf16, SS and MS: MMA on the synthesised sequences, keypoint movement, Sacre Coeur SfM"),
    Benchmark("match-gpu", "match_speed.py", ("--device", "cuda"), "cuda", False, "MNN matching on the GPU"),
    Benchmark("aachen-estimate-gpu", "aachen_estimate.py", ("--device", "cuda", "--images", "10", "--pairs", "200"),
              "cuda", False,
              "Aachen v1.1 run-time estimate on the GPU"),
    Benchmark("refine-sfm-gpu", "refine_sfm.py", ("--device", "cuda", "--no-sift"), "cuda", False,
              "Sacre Coeur SfM with and without refinement on the GPU: refinement time against extraction time"),
    Benchmark("refine-cost-gpu", "refine_cost.py", ("--device", "cuda"), "cuda", False,
              "refinement time per keypoint against photo size on the GPU, beside the CPU's extraction time"),
    Benchmark("refine-batching-gpu", "refine_batching.py", ("--device", "cuda"), "cuda", False,
              "patch alignment batched across images against one image per batch on the GPU"),
    Benchmark("cluster-scaling-gpu", "cluster_scaling.py", ("--device", "cuda", "--workers", "1"), "cuda", False,
              "extraction and matching with one Ray worker per GPU against the single-process commands"),
)


def replace_block(document: str, name: str, content: str) -> str:
    """The document with the generated block ``name`` holding ``content`` (appended when absent)."""
    begin, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
    block = f"{begin}\n{content.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + f"\n\n### {name}\n\n{block}\n"


def run_benchmark(benchmark: Benchmark, reference: Path | None) -> str:
    command = [sys.executable, str(REPO / "benchmarks" / benchmark.script), *benchmark.arguments]
    if benchmark.uses_reference and reference:
        command += ["--reference", str(reference)]
    print(f"== {benchmark.name}: {' '.join(command[1:])}", file=sys.stderr)
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO)  # progress goes to stderr
    if result.returncode:
        raise SystemExit(f"error: {benchmark.name} failed (exit {result.returncode}); its output is above")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="which set of tables to regenerate (default cpu)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these benchmarks")
    parser.add_argument("--reference", type=Path, default=None,
                        help="local checkout of the original D2-Net code (baseline of the extraction tables)")
    parser.add_argument("--document", type=Path, default=DOCUMENT, help="markdown file to update")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for benchmark in BENCHMARKS:
            print(f"{benchmark.name:28s} {benchmark.device:5s} {benchmark.what}")
        return 0
    names = {b.name for b in BENCHMARKS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; --list shows them")
    chosen = [b for b in BENCHMARKS if (b.name in args.only if args.only else b.device == args.device)]
    if args.reference and not (args.reference / "lib" / "model_test.py").is_file():
        parser.error(f"{args.reference}: not a D2-Net checkout (no lib/model_test.py); clone mihaidusmanu/d2-net")
    sys.path.insert(0, str(REPO))
    from benchmarks.extract_speed import machine_description

    for benchmark in chosen:
        output = run_benchmark(benchmark, args.reference)
        stamp = (f"Generated by `python -m benchmarks --only {benchmark.name}` on "
                 f"{datetime.date.today().isoformat()}; machine: {machine_description(benchmark.device)}.")
        document = args.document.read_text() if args.document.is_file() else "# Benchmarks\n"
        updated = replace_block(document, benchmark.name, f"{stamp}\n\n{output.strip()}")
        scratch = args.document.with_name(f".{args.document.name}.part")
        scratch.write_text(updated)
        scratch.replace(args.document)
        print(f"updated {args.document} ({benchmark.name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
