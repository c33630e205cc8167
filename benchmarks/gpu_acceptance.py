"""Every GPU figure d2sfm claims, measured by one command on a lent GPU machine (issue 37; docs/gpu.md says how).

    python benchmarks/gpu_acceptance.py --output OUT --stage .gpu-stage/main              # call 1 (docs/gpu.md)
    python benchmarks/gpu_acceptance.py --output OUT --stage .gpu-stage/colmap --previous .gpu-stage/colmap/from-main
    python benchmarks/gpu_acceptance.py --output outputs/gpu-smoke --smoke                # on the CPU, in CI
    python benchmarks/gpu_acceptance.py --render OUT/report.json       # docs/benchmarks.md's GPU tables from a report

Sections, each timed and recorded as ok, failed (with its first error line) or skipped (with why); a failing
section does not stop the others, and the report is rewritten after each, so a run cut short keeps what it did:

* environment: device, driver, CUDA, torch, d2sfm commit, which optional packages are importable;
* parity: fp32 extraction of the two reference images (SS and MS) against the original code's outputs, judged by
  the criteria of tests/evaluation/test_parity.py (d2sfm.evaluation.parity.ParityCriteria);
* throughput: the whole ``python -m d2sfm.extract`` command (start-up included) on a fixed set of photos at 1600 px,
  SS and MS, fp32 and bf16, with its peak GPU memory, against the goals (SS >= 60, MS >= 20 images/s within 8 GiB);
* precision: bf16 against fp32: matching accuracy (MMA) on the sequences synthesised from the Sacre Coeur photos,
  keypoint movement, and the features and matches the reconstruction section maps (handed over in handoff.tar);
* matching: d2sfm's GPU mutual nearest neighbours against the dense baseline (time, memory, same matches);
* ray: extraction and matching with one Ray GPU worker against the plain commands (equal outputs, time);
* reconstruction: the Sacre Coeur reconstruction from each precision's features (needs pycolmap);
* refinement: both refinement stages on the GPU on the fp32 multi-scale model, beside that extraction's time;
* dense: PatchMatch and fusion on that model (needs pycolmap built with CUDA).

The lent GPU machines have torch but no pycolmap, and 64 MiB travel per call, so the run is two calls: the first
(weights, photos, Ray) runs every section that needs no pycolmap and writes handoff.tar; the second (the CUDA
pycolmap wheel and the first call's output) runs the rest and merges both into one report.json and report.md.
``benchmarks/gpu_stage.py`` packs each call's inputs; ``--smoke`` runs every section on tiny photos on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR, SHARED, WEIGHTS  # noqa: E402

MAIN_SECTIONS = ("environment", "parity", "throughput", "precision", "matching", "ray")
COLMAP_SECTIONS = ("reconstruction", "refinement", "dense")
SECTIONS = MAIN_SECTIONS + COLMAP_SECTIONS
GOALS = {"SS": 60.0, "MS": 20.0}  # images/s of the whole extract command at 1600 px on an H100
GOAL_MEMORY_GIB = 8.0
H100_FP32_TFLOPS = 67.0  # NVIDIA's figure for the H100 SXM's fp32 (non-tensor) arithmetic
# Ray's worker against the plain command: another process, maybe other threads, so other kernels' rounding and the
# odd near-tie keypoint (see d2sfm.evaluation.parity); equal means this share of keypoints and of matches agree.
EQUAL_SHARE = 0.99
DOCUMENT = REPO / "docs" / "benchmarks.md"
BLOCK = "gpu-acceptance"
log = logging.getLogger("gpu_acceptance")


@dataclass(frozen=True)
class Plan:
    """How big each section's work is: the real run's, or the smoke run's tiny one."""

    count: int = 220  # photos of the throughput runs (the Sacre Coeur photos repeated, as extract-command-gpu)
    max_edge: int = 1600
    photos: int | None = None  # Sacre Coeur photos of the precision, reconstruction and refinement sections (all)
    mma_photos: int | None = None  # the first N of them make the MMA sequences (all)
    photo_edge: int | None = None  # their longest side (None: their own size, as reconstruct extracts them)
    synthetic: bool = False  # views of d2sfm's synthetic scene instead (320x240: tiny and sure to reconstruct)
    precision_pyramids: tuple[str, ...] = ("SS", "MS")  # of the precision and reconstruction sections
    conv: str = "exact"  # the precision section's convolutions ("winograd": the CPU's faster ones, for the smoke)
    mma_edge: int = 512
    mnn_features: tuple[int, ...] = (8000, 20000)
    mnn_repeats: int = 5
    ray_count: int = 48
    seeds: tuple[int, ...] = (0, 1, 2)
    parity_pyramids: tuple[str, ...] = ("SS", "MS")
    parity_images: int = 2
    dense_max_size: int = 1000


FULL = Plan()
SMOKE = Plan(count=3, max_edge=160, photos=6, synthetic=True, conv="winograd", mma_photos=1, mma_edge=128,
             precision_pyramids=("SS",), mnn_features=(300,), mnn_repeats=1, ray_count=2, seeds=(0,),
             parity_pyramids=("SS",), parity_images=1, dense_max_size=160)


@dataclass
class Inputs:
    """The files a run reads: from a stage folder (benchmarks/gpu_stage.py), else from ../shared."""

    weights: Path
    photos: Path  # Sacre Coeur
    reference: Path  # the original code's outputs on the two reference images

    def needed(self, sections: list[str]) -> list[Path]:
        """The inputs these sections read (a stage holds only its own call's)."""
        needs = {"parity": (self.weights, self.reference), "throughput": (self.weights, self.photos),
                 "precision": (self.weights, self.photos), "ray": (self.weights, self.photos),
                 "reconstruction": (self.photos,)}
        return list(dict.fromkeys(path for name in sections for path in needs.get(name, ())))

    @classmethod
    def find(cls, stage: Path | None) -> Inputs:
        if stage is not None:
            return cls(stage / "weights" / WEIGHTS.name, stage / "photos", stage / "reference")
        return cls(WEIGHTS, SACRE_COEUR, SHARED / "reference" / "d2net_original_hed_vgg16")


@dataclass
class Context:
    plan: Plan
    inputs: Inputs
    device: str
    precisions: tuple[str, ...]
    work: Path
    output: Path
    report: dict
    deadline: float | None = None  # time.perf_counter() by which child commands must have ended (--limit)

    def time_left(self) -> float | None:
        """Seconds a child command may run (None: no limit); a TimeoutExpired of one cut there names --limit."""
        return None if self.deadline is None else max(1.0, self.deadline - time.perf_counter())


# ------------------------------------------------------------------------------------------------ helpers


def run_command(command: list[str], timeout: float | None = None, env: dict | None = None) -> float:
    """Seconds a child command took from start to exit; its error output in the exception when it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode:
        log.error(result.stderr[-5000:])
        raise RuntimeError(f"{' '.join(command[1:4])} ... {exit_description(result.returncode)}: "
                           f"{telling_line(result.stderr)}")
    return time.perf_counter() - started


def scaled_photos(source: Path, folder: Path, count: int | None, edge: int | None) -> list[str]:
    """The first ``count`` photos of ``source`` with their longest side ``edge`` (JPEG 95), or links to them."""
    import cv2

    from d2sfm.io.images import list_images, read_image_bgr

    folder.mkdir(parents=True, exist_ok=True)
    names = list_images(source)[:count] if count else list_images(source)
    for name in names:
        if edge is None:
            os.symlink((source / name).resolve(), folder / name)
            continue
        image = read_image_bgr(source / name)
        scale = edge / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name), resized, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return names


def section_photos(ctx: Context) -> list[str]:
    """``work/photos`` of the precision, reconstruction, refinement and dense sections (made once); their names."""
    from d2sfm.io.images import list_images

    photos = ctx.work / "photos"
    if not photos.exists():
        if ctx.plan.synthetic:
            from d2sfm.synthetic.scene import render_views

            render_views(ctx.work / "synthetic", count=ctx.plan.photos or 6, width=320, height=240, focal=256.0)
            photos.symlink_to(ctx.work / "synthetic" / "images", target_is_directory=True)
        else:
            scaled_photos(ctx.inputs.photos, photos, ctx.plan.photos, ctx.plan.photo_edge)
    return list_images(photos)


def importable(module: str) -> str | None:
    """The module's version when it imports, else None."""
    return None if import_problem(module) else str(getattr(sys.modules[module], "__version__", "present"))


def exit_description(returncode: int) -> str:
    if returncode < 0:
        import signal

        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited {returncode}"


def telling_line(stderr: str) -> str:
    """The line of a child's error output that says what went wrong: COLMAP's fatal log line or a Python error,
    else the last line (not a stack frame's address)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line[:1] == "F" and line[1:5].isdigit() or "Check failed" in line:
            return line
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else "no output"


def pycolmap_missing(why_needed: str = "") -> dict | None:
    """A section's "skipped" entry where pycolmap does not import (the first call's machine), else None."""
    problem = import_problem("pycolmap")
    if problem is None:
        return None
    return {"status": "skipped", "why": f"pycolmap is not importable here{why_needed} ({problem}; the second call "
            "of docs/gpu.md carries the CUDA build)"}


def import_problem(module: str) -> str | None:
    """Why ``module`` does not import here (its error's first line), or None when it does."""
    try:
        __import__(module)
    except Exception as error:  # noqa: BLE001 (a broken install, a missing library, is as absent as a missing one)
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return None


def synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ sections


def _free_mb(free: int | None) -> float | None:
    return None if free is None else round(free / 2**20)


def section_environment(ctx: Context) -> dict:
    import torch

    from d2sfm.features.extraction import shared_memory_free_bytes
    from d2sfm.runtime.device import full_float32_cudnn

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    figures = {"device": ctx.device, "torch": torch.__version__, "python": platform.python_version(),
               "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "commit": commit.stdout.strip() or "unknown", "numpy": importable("numpy"),
               "pycolmap": importable("pycolmap"), "ray": importable("ray"), "opencv": importable("cv2"),
               "shared_memory_free_mb": _free_mb(shared_memory_free_bytes())}
    with full_float32_cudnn():  # what cuDNN's fp32 convolutions run as inside it ("none": the allow_tf32 flag rules)
        precision = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "none")
        figures["cudnn_fp32_in_extraction"] = (precision if precision != "none" else
                                               "tf32" if torch.backends.cudnn.allow_tf32 else "ieee")
    if ctx.device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        figures.update({"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
                        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
        smi = shutil.which("nvidia-smi")
        if smi:
            driver = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True)
            figures["driver"] = driver.stdout.strip()
    if figures["pycolmap"]:
        import pycolmap

        figures["pycolmap_cuda"] = bool(getattr(pycolmap, "has_cuda", False))
    return figures


def section_parity(ctx: Context) -> dict:
    import numpy as np

    from d2sfm.evaluation.parity import ParityCriteria, compare_with_reference, float64_backbone, rounding_error
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
    from d2sfm.io.images import read_image_bgr

    criteria = ParityCriteria()
    names = sorted(path.name[:-4] for path in ctx.inputs.reference.glob("*.png"))[: ctx.plan.parity_images]
    if not names:
        raise RuntimeError(f"{ctx.inputs.reference}: no reference images (*.png with their .ss.npz/.ms.npz)")
    rows = []
    for pyramid in ctx.plan.parity_pyramids:
        extractor = D2Extractor(ctx.inputs.weights, ExtractionConfig(scales=SINGLE_SCALE if pyramid == "SS"
                                                                      else MULTI_SCALE), device=ctx.device)
        for name in names:
            image = read_image_bgr(ctx.inputs.reference / f"{name}.png")
            rounding = rounding_error(extractor, ctx.inputs.weights, image,
                                      float64_backbone(extractor, ctx.inputs.weights, image))
            reference = dict(np.load(ctx.inputs.reference / f"{name}.{pyramid.lower()}.npz"))
            report = compare_with_reference(extractor, image, reference, criteria.tolerance(rounding), criteria)
            failures = report.failures(criteria)
            rows.append({"image": name, "pyramid": pyramid, "rounding": rounding, **report.as_dict(),
                         "holds": not failures, "failures": failures})
    return {"criteria": dataclasses.asdict(criteria), "rows": rows, "holds": all(row["holds"] for row in rows)}


def backbone_tflop_per_image(paths: list[Path], scales, max_edge: int) -> float:
    """The network's arithmetic per photo, averaged over ``paths`` resized as ``--max-edge max_edge`` does: what
    any exact implementation computes (d2sfm.features.network.backbone_gflop). Images/s times this is the rate the
    GPU sustained, to hold against its peak (an H100's fp32 without TF32: about 67 TFLOP/s)."""
    from PIL import Image

    from d2sfm.features.extractor import ExtractionConfig, network_input_size
    from d2sfm.features.pyramid import pyramid_gflop

    config = ExtractionConfig(max_edge=max_edge)
    total = 0.0
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        total += pyramid_gflop(*network_input_size(height, width, config.max_edge, config.max_sum_edges),
                               scales)
    return total / max(1, len(paths)) / 1000


def section_throughput(ctx: Context) -> dict:
    from benchmarks.extract_command import prepare_photos
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE

    photos = ctx.work / "throughput"
    paths = prepare_photos(ctx.inputs.photos, photos, ctx.plan.count, ctx.plan.max_edge)
    tflop = {pyramid: backbone_tflop_per_image(paths, scales, ctx.plan.max_edge)
             for pyramid, scales in (("SS", SINGLE_SCALE), ("MS", MULTI_SCALE))}
    rows = []
    runs = [(pyramid, precision) for pyramid in ("SS", "MS") for precision in ctx.precisions]
    for done, (pyramid, precision) in enumerate(runs):
        timings = ctx.work / f"timings_{pyramid}_{precision}.json"
        command = [sys.executable, "-m", "d2sfm.extract", str(photos), "-o", str(ctx.work / "throughput.h5"),
                   "--overwrite", "--quiet", "--weights", str(ctx.inputs.weights), "--device", ctx.device,
                   "--precision", precision, "--max-edge", str(ctx.plan.max_edge), "--timings", str(timings)]
        command += ["--multiscale"] if pyramid == "MS" else []
        try:
            seconds = run_command(command, timeout=ctx.time_left())
        except subprocess.TimeoutExpired:  # the rows measured so far are kept; the report names the others
            cut = ", ".join(" ".join(run) for run in runs[done:])
            return {"status": "partial", "why": f"{cut} cut at the run's --limit", "max_edge": ctx.plan.max_edge,
                    "rows": rows}
        recorded = json.loads(timings.read_text())
        rate = ctx.plan.count / seconds
        # the goal counts what the allocator reserved (what the process holds, less the CUDA context)
        peak, reserved = (None if recorded.get(key) is None else recorded[key] / 1024
                          for key in ("peak_gpu_memory_mb", "peak_gpu_reserved_mb"))  # None on the CPU
        rows.append({"pyramid": pyramid, "precision": precision, "photos": ctx.plan.count, "seconds": seconds,
                     "images_per_second": rate, "images_per_second_in_loop":
                     recorded.get("images_per_second_in_loop"), "peak_gpu_memory_gib": peak,
                     "peak_gpu_reserved_gib": reserved, "peak_rss_gib": (recorded.get("peak_rss_mb") or 0) / 1024,
                     "tflop_per_image": tflop[pyramid], "sustained_tflops": rate * tflop[pyramid],
                     "stage_seconds": recorded.get("seconds", {}), "goal": GOALS[pyramid],
                     "goal_met": rate >= GOALS[pyramid] and max(peak or 0, reserved or 0) <= GOAL_MEMORY_GIB})
        log.info(f"  {pyramid} {precision}: {rate:.1f} images/s")
    return {"max_edge": ctx.plan.max_edge, "rows": rows}


def _keypoints_only(features: Path, target: Path) -> None:
    """A copy of a features file without its descriptors: what mapping reads, a fraction of the size."""
    import h5py

    with h5py.File(features, "r") as source, h5py.File(target, "w") as copy:
        copy.attrs.update(source.attrs)

        def visit(name, item):
            if isinstance(item, h5py.Group):
                copy.require_group(name).attrs.update(item.attrs)
            elif not name.endswith("descriptors"):
                source.copy(item, copy, name=name)
        source.visititems(visit)


def section_precision(ctx: Context) -> dict:
    import torch

    from benchmarks.precision_quality import movement
    from d2sfm.features.extraction import default_loading, extract_features
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
    from d2sfm.matching.matcher import match_pairs
    from d2sfm.matching.pairs import exhaustive_pairs, write_pairs
    from pipelines.hpatches import D2Options, Method, find_sequences, run_benchmark
    from pipelines.synthetic_sequences import synthesise_sequences

    photos, names = ctx.work / "photos", section_photos(ctx)
    sequences, mma_photos = ctx.work / "sequences", ctx.work / "mma_photos"
    mma_photos.mkdir()
    for name in names[: ctx.plan.mma_photos] if ctx.plan.mma_photos else names:
        os.symlink((photos / name).resolve(), mma_photos / name)
    synthesise_sequences(mma_photos, sequences, seed=0, max_edge=ctx.plan.mma_edge, progress=False)
    _, kept, _ = find_sequences(sequences)
    pairs = exhaustive_pairs(names)
    handoff = ctx.work / "handoff"
    handoff.mkdir(exist_ok=True)
    write_pairs(handoff / "pairs.txt", pairs)
    device = torch.device(ctx.device)
    rows = []
    for pyramid in ctx.plan.precision_pyramids:
        fp32_features = None
        for precision in ctx.precisions:
            label = f"{pyramid} {precision}"
            report = run_benchmark(sequences, [Method(f"d2-{pyramid.lower()}", label, ctx.inputs.weights)],
                                   ctx.work / f"mma_{pyramid}_{precision}", device,
                                   D2Options(precision=precision, conv=ctx.plan.conv),
                                   progress=False)
            config = ExtractionConfig(scales=MULTI_SCALE if pyramid == "MS" else SINGLE_SCALE, precision=precision,
                                      conv=ctx.plan.conv)
            extractor = D2Extractor(ctx.inputs.weights, config, device)
            batch_size, workers = default_loading(device)  # as reconstruct extracts
            features = ctx.work / f"features_{pyramid}_{precision}.h5"
            synchronise(ctx.device)
            started = time.perf_counter()
            extract_features(photos, names, features, extractor, config.as_dict(), batch_size=batch_size,
                             workers=workers, progress=False)
            synchronise(ctx.device)
            extract_seconds = time.perf_counter() - started
            fp32_features = fp32_features or features
            started = time.perf_counter()
            variant = handoff / f"{pyramid}_{precision}"
            variant.mkdir(exist_ok=True)
            match_pairs(features, pairs, variant / "matches.h5", device=device, progress=False)
            match_seconds = time.perf_counter() - started
            _keypoints_only(features, variant / "features.h5")
            overall = report["methods"][label]["overall"]
            rows.append({"pyramid": pyramid, "precision": precision,
                         "thresholds": list(report["methods"][label]["thresholds"]), "mma": overall["mma"],
                         "features_per_image": overall["features_per_image"],
                         "moved": movement(fp32_features, features, names), "extract_seconds": extract_seconds,
                         "match_seconds": match_seconds})
    with tarfile.open(ctx.output / "handoff.tar", "w") as archive:
        archive.add(handoff, arcname="handoff")
    return {"photos": len(names), "photo_edge": ctx.plan.photo_edge, "synthetic": ctx.plan.synthetic,
            "sequences": len(kept),
            "mma_photos": len(list(mma_photos.iterdir())), "rows": rows}


def section_matching(ctx: Context) -> dict:
    from benchmarks.match_speed import measure

    rows = []
    for features in ctx.plan.mnn_features:
        results = {impl: measure({"impl": impl, "features": features, "device": ctx.device,
                                  "repeats": ctx.plan.mnn_repeats}) for impl in ("dense", "d2sfm")}
        same = results["dense"]["matches"] == results["d2sfm"]["matches"]
        for impl, result in results.items():
            rows.append({"features": features, "implementation": impl, "seconds_per_pair": result["seconds"],
                         "peak_mb": result["peak_mb"], "matches": len(result["matches"]), "same_matches": same})
    return {"rows": rows, "same": all(row["same_matches"] for row in rows)}


def section_ray(ctx: Context) -> dict:
    import numpy as np

    from benchmarks.extract_command import prepare_photos
    from d2sfm.evaluation.parity import agreement
    from d2sfm.io.h5 import list_entries, read_features
    from d2sfm.matching.pairs import exhaustive_pairs

    problem = import_problem("ray")
    if problem:
        return {"status": "skipped", "why": f"Ray is not importable here ({problem}; pip install 'd2sfm[ray]'; the "
                "first call of docs/gpu.md carries it)"}
    import d2sfm
    from d2sfm.cluster.ray_backend import LOCAL
    from d2sfm.config import FeatureConfig, RunConfig
    from d2sfm.features.pyramid import SINGLE_SCALE

    photos = ctx.work / "ray_photos"
    edge = min(ctx.plan.max_edge, 640)
    prepare_photos(ctx.inputs.photos, photos, ctx.plan.ray_count, edge)
    config = FeatureConfig(scales=SINGLE_SCALE, max_edge=edge, weights=str(ctx.inputs.weights))
    runs, ray_gpus = {}, None
    try:  # through the API in this process: one Ray cluster serves both stages (its start-up is in the extraction)
        for label, address in (("plain", None), ("ray", LOCAL)):
            run = RunConfig(device=ctx.device, ray=address, ray_workers=1 if address else None, progress=False)
            features, matches = ctx.work / f"ray_{label}_features.h5", ctx.work / f"ray_{label}_matches.h5"
            started = time.perf_counter()
            d2sfm.extract(photos, features, config, run=run)
            extract = time.perf_counter() - started
            started = time.perf_counter()
            d2sfm.match(features, exhaustive_pairs(sorted(list_entries(features))), matches, run=run)
            runs[label] = {"features": features, "matches": matches, "extract_seconds": extract,
                           "match_seconds": time.perf_counter() - started}
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            ray_gpus = sys.modules["ray"].cluster_resources().get("GPU", 0)  # 0 on a GPU machine: Ray saw none
            sys.modules["ray"].shutdown()
    names = sorted(list_entries(runs["plain"]["features"]))
    shares, cosines, equal_counts = [], [], []
    for name in names:
        plain, ray = read_features(runs["plain"]["features"], name), read_features(runs["ray"]["features"], name)
        result = agreement(ray.keypoints, plain.keypoints)
        shares.append(min(result.ours_within(0.01), result.theirs_within(0.01)))
        close = result.ours_distance <= 0.01
        if close.any():
            cosines.append(float(np.min(np.sum(ray.descriptors[close].astype(np.float32)
                                               * plain.descriptors[result.nearest[close]].astype(np.float32), 1))))
        equal_counts.append(len(ray.keypoints) == len(plain.keypoints))
    pairs = exhaustive_pairs(names)
    overlaps = [_match_overlap(runs["plain"], runs["ray"], pair) for pair in pairs]
    return {"photos": len(names), "edge": edge, "device": ctx.device, "ray_gpus": ray_gpus,
            "min_keypoint_share": min(shares),
            "min_descriptor_cosine": min(cosines, default=1.0), "equal_counts": all(equal_counts),
            "pairs": len(pairs), "pairs_with_equal_matches": sum(overlap == 1.0 for overlap in overlaps),
            "min_match_overlap": min(overlaps),
            "equal": min(shares) >= EQUAL_SHARE and min(overlaps) >= EQUAL_SHARE,
            "seconds": {label: {"extract": run["extract_seconds"], "match": run["match_seconds"]}
                        for label, run in runs.items()}}


def _match_overlap(one: dict, other: dict, pair: tuple[str, str]) -> float:
    """Shared matches / all matches of a pair in two runs, a match named by its two keypoints' positions (rounded
    to 0.01 px): a keypoint that one run has and the other not shifts every later index, not the positions."""
    from d2sfm.io.h5 import read_keypoints
    from d2sfm.io.matches_h5 import read_matches

    def named(run: dict) -> set:
        matches = read_matches(run["matches"], *pair)[0]
        xy0, xy1 = (read_keypoints(run["features"], name)[0][:, :2].round(2) for name in pair)
        return {(*xy0[i], *xy1[j]) for i, j in matches}

    a, b = named(one), named(other)
    return len(a & b) / max(len(a | b), 1)


def _handoff(ctx: Context) -> Path | None:
    """The first call's features and matches (unpacked from handoff.tar), or None."""
    folder = ctx.work / "handoff"
    if folder.is_dir():
        return folder
    for candidate in (ctx.output / "handoff.tar", *(p / "handoff.tar" for p in ctx.report.get("_previous", []))):
        if Path(candidate).is_file():
            with tarfile.open(candidate) as archive:
                # the "data" filter (no paths outside, no devices) where this Python has it (3.10.12+, 3.11.4+)
                archive.extractall(ctx.work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            return folder
    return None


def section_reconstruction(ctx: Context) -> dict:
    missing = pycolmap_missing()
    if missing:
        return missing
    from benchmarks.sfm_vs_sift import map_matches
    from d2sfm.matching.pairs import read_pairs

    handoff = _handoff(ctx)
    if handoff is None:
        return {"status": "skipped", "why": "no handoff.tar: the precision section (first call) did not run"}
    photos = ctx.work / "photos"
    section_photos(ctx)
    pairs = read_pairs(handoff / "pairs.txt")
    names = sorted({name for pair in pairs for name in pair})
    rows = []
    for variant in sorted(p for p in handoff.iterdir() if p.is_dir()):
        work = ctx.work / f"sfm_{variant.name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        summary = map_matches(photos, names, variant / "features.h5", variant / "matches.h5", pairs, work,
                              ctx.plan.seeds, {})
        pyramid, precision = variant.name.split("_")
        rows.append({"pyramid": pyramid, "precision": precision, "registered_per_seed": summary["registered_per_seed"],
                     "largest": summary["largest"], "seconds": summary["seconds"], "images": len(names)})
    return {"seeds": list(ctx.plan.seeds), "rows": rows}


def _fp32_model(ctx: Context) -> tuple[Path, Path] | None:
    """(database, sparse model folder) of the fp32 multi-scale reconstruction (seed 0), if it made a model."""
    for pyramid in ("MS", "SS"):
        work = ctx.work / f"sfm_{pyramid}_fp32"
        model = work / f"sparse_{ctx.plan.seeds[0]}" / "0"
        if model.is_dir():
            return work / "database.db", model
    return None


def section_refinement(ctx: Context) -> dict:
    import torch

    missing = pycolmap_missing(" (the refinement reads a COLMAP database and model)")
    if missing:
        return missing
    from d2sfm.io.images import gray_image_reader
    from d2sfm.io.model_files import read_model
    from d2sfm.refinement.database_refinement import read_database_keypoints, refine_keypoints
    from d2sfm.refinement.model_refinement import refine_model
    from d2sfm.refinement.tracks import read_verified_matches

    found = _fp32_model(ctx)
    if found is None:
        return {"status": "skipped", "why": "no fp32 model: the reconstruction section made none"}
    database, model_folder = found
    device = torch.device(ctx.device)
    names, keypoints = read_database_keypoints(database)
    matches = read_verified_matches(database)
    synchronise(ctx.device)
    started = time.perf_counter()
    _, summary = refine_keypoints(keypoints, names, matches, ctx.work / "photos", None, device, progress=False)
    synchronise(ctx.device)
    database_seconds = time.perf_counter() - started
    model = read_model(model_folder)
    model_names = {image_id: image.name for image_id, image in model.images.items()}
    started = time.perf_counter()
    _, model_summary = refine_model(model, gray_image_reader(model_names, ctx.work / "photos"), device)
    synchronise(ctx.device)
    model_seconds = time.perf_counter() - started
    pyramid = model_folder.parent.parent.name.split("_")[1]
    extraction = next((row["extract_seconds"] for row in _rows(ctx.report, "precision")
                       if row["pyramid"] == pyramid and row["precision"] == "fp32"), None)
    return {"pyramid": pyramid, "keypoints_in_tracks": summary.keypoints_in_tracks,
            "observations_aligned": model_summary.observations_aligned, "database_seconds": database_seconds,
            "model_seconds": model_seconds, "extraction_seconds": extraction,
            "share_of_extraction": (database_seconds + model_seconds) / extraction if extraction else None}


def section_dense(ctx: Context) -> dict:
    missing = pycolmap_missing()
    if missing:
        return missing
    from d2sfm.sfm.dense import cuda_problem

    problem = cuda_problem()
    if problem:
        return {"status": "skipped", "why": problem}
    found = _fp32_model(ctx)
    if found is None:
        return {"status": "skipped", "why": "no fp32 model: the reconstruction section made none"}
    spec = {"model": str(found[1]), "images": str(ctx.work / "photos"), "dense": str(ctx.work / "dense"),
            "max_image_size": ctx.plan.dense_max_size}
    # in a child: a crash inside COLMAP (as fusion once did) must not take the report with it
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child-dense", json.dumps(spec)], cwd=REPO,
                            capture_output=True, text=True, timeout=ctx.time_left() or 600)
    if result.returncode:
        log.error(result.stderr[-5000:])
        raise RuntimeError(f"dense child {exit_description(result.returncode)}: {telling_line(result.stderr)}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - started,
            "max_image_size": ctx.plan.dense_max_size}


def child_dense(spec: dict) -> None:
    """The dense stage's steps one by one (d2sfm.sfm.dense, as run_dense chains them), each timed."""
    from d2sfm.sfm.dense import fuse, patch_match, prepare_workspace, workspace_path

    dense = Path(spec["dense"])
    workspace = workspace_path(dense)
    timings = {}
    started = time.perf_counter()
    prepare_workspace(Path(spec["model"]), Path(spec["images"]), workspace, spec["max_image_size"])
    timings["undistort_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    patch_match(workspace, progress=False)
    timings["patch_match_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    points = fuse(workspace)
    timings["fusion_seconds"] = time.perf_counter() - started
    print(json.dumps({**timings, "dense_points": points}))


SECTION_FUNCTIONS = {name: globals()[f"section_{name}"] for name in SECTIONS}


# ------------------------------------------------------------------------------------------------ the report


def _rows(report: dict, section: str) -> list[dict]:
    entry = report.get("sections", {}).get(section, {})
    return entry.get("figures", {}).get("rows", []) if entry.get("status") in ("ok", "partial") else []


def write_report(report: dict, output: Path) -> None:
    """report.json and report.md, each written whole or not at all."""
    for name, text in (("report.json", json.dumps({k: v for k, v in report.items() if not k.startswith("_")},
                                                   indent=2, default=str)),
                       ("report.md", markdown(report))):
        scratch = output / f".{name}.part"
        scratch.write_text(text)
        scratch.replace(output / name)


def run_sections(ctx: Context, names: list[str], budget: float | None = None) -> None:
    """Each section in turn; once ``budget`` seconds have gone, the rest are skipped (a lent machine's call has a
    hard limit, and a report of what finished is worth more than a call killed mid-way)."""
    run_started = time.perf_counter()
    for name in names:
        log.info(f"== {name}")
        started = time.perf_counter()
        try:
            if budget is not None and started - run_started > budget:
                raise TimeoutError(f"the run's budget of {budget:.0f} s was spent before this section")
            figures = SECTION_FUNCTIONS[name](ctx)
            status = figures.pop("status", "ok") if isinstance(figures, dict) else "ok"
            entry = {"status": status, "why": figures.pop("why", None), "figures": figures}
        except Exception as error:  # noqa: BLE001 (one section's failure is a figure, not the end of the run)
            log.error(traceback.format_exc())
            first_line = (str(error).strip().splitlines() or [""])[0]
            entry = {"status": "failed", "why": f"{type(error).__name__}: {first_line}", "figures": {}}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        ctx.report.setdefault("sections", {})[name] = entry
        note = f" ({entry['why']})" if entry["why"] else ""
        log.info(f"   {name}: {entry['status']} in {entry['seconds']} s{note}")
        write_report(ctx.report, ctx.output)


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _table_parity(report: dict, rows: list[dict]) -> list[str]:
    lines: list[str] = []
    lines += ["", "Parity of fp32 extraction with the original's outputs (criteria of tests/evaluation/"
              "test_parity.py):", "", "| image | pyramid | keypoints ours / original | ours within 0.01 px | "
              "original within 0.01 px | max score error | min cosine | differing (unexplained) | holds |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['image']} | {row['pyramid']} | {row['counts'][0]} / {row['counts'][1]} | "
                     f"{row['ours_share']:.2%} | {row['theirs_share']:.2%} | {row['max_score_error']:.1e} | "
                     f"{row['min_cosine']:.5f} | {row['differing']} ({row['unexplained']}) | "
                     f"{'yes' if row['holds'] else 'NO'} |")
    return lines


def _table_throughput(report: dict, rows: list[dict]) -> list[str]:
    sections = report["sections"]
    lines: list[str] = []
    lines += ["", f"Whole `python -m d2sfm.extract` command on {rows[0]['photos']} photos at "
              f"{sections['throughput']['figures']['max_edge']} px (start-up included); goals SS >= "
              f"{GOALS['SS']:.0f}, MS >= {GOALS['MS']:.0f} images/s within {GOAL_MEMORY_GIB:.0f} GiB:", "",
              "| pyramid | precision | seconds | images/s | images/s in the loop | network TFLOP per image | "
              "TFLOP/s sustained | peak GPU memory GiB (tensors / reserved) | peak RSS GiB | goal met |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['pyramid']} | {row['precision']} | {row['seconds']:.1f} | "
                     f"{row['images_per_second']:.1f} | {_fmt(row['images_per_second_in_loop'], '.1f')} | "
                     f"{_fmt(row.get('tflop_per_image'), '.3f')} | {_fmt(row.get('sustained_tflops'), '.2f')} | "
                     f"{_fmt(row['peak_gpu_memory_gib'])} / {_fmt(row.get('peak_gpu_reserved_gib'))} | "
                     f"{row['peak_rss_gib']:.2f} | "
                     f"{'yes' if row['goal_met'] else 'no'} |")
    lines += ["", "TFLOP/s sustained: images/s times the network's arithmetic per image (what any exact implementation "
              f"computes). fp32 here is full fp32 (TF32 off, for parity with the original), which an H100 SXM computes "
              f"at {H100_FP32_TFLOPS:.0f} TFLOP/s at best: at most {H100_FP32_TFLOPS:.0f} / (TFLOP per image) "
              "images/s, whatever the code; the goals need bf16's tensor cores."]
    return lines


def _table_precision(report: dict, rows: list[dict]) -> list[str]:
    sections = report["sections"]
    lines: list[str] = []
    figures = sections["precision"]["figures"]
    thresholds = rows[0]["thresholds"]
    kind = "synthetic-scene" if figures.get("synthetic") else "Sacre Coeur"
    shown = [t for t in (1, 3, 5, 10) if t in thresholds]
    lines += ["", f"bf16 against fp32: MMA on {figures['sequences']} sequences synthesised from "
              f"{figures['mma_photos']} {kind} photos; keypoint movement, extraction and matching of "
              f"{figures['photos']} photos "
              f"({'own size' if figures['photo_edge'] is None else str(figures['photo_edge']) + ' px'}):", "",
              "| pyramid | precision | " + " | ".join(f"MMA@{t}px" for t in shown) + " | features/image | "
              "keypoints within 0.05 / 1 px of fp32's | extraction s | matching s |",
              "| --- | --- | " + "---: | " * len(shown) + "---: | --- | ---: | ---: |"]
    for row in rows:
        mma = " | ".join(f"{row['mma'][thresholds.index(t)]:.3f}" for t in shown)
        lines.append(f"| {row['pyramid']} | {row['precision']} | {mma} | {row['features_per_image']:.0f} | "
                     f"{row['moved'][0]:.1%} / {row['moved'][1]:.1%} | {row['extract_seconds']:.1f} | "
                     f"{row['match_seconds']:.1f} |")
    return lines


def _table_reconstruction(report: dict, rows: list[dict]) -> list[str]:
    sections = report["sections"]
    lines: list[str] = []
    lines += ["", f"Sacre Coeur reconstructed from each precision's features (d2sfm's mapper options, seeds "
              f"{sections['reconstruction']['figures']['seeds']}; the largest model of the first seed):", "",
              "| pyramid | precision | registered per seed | 3D points | track length | reproj. error px |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        largest = row["largest"] or {}
        lines.append(f"| {row['pyramid']} | {row['precision']} | {row['registered_per_seed']} of {row['images']} "
                     f"| {largest.get('points3D', 0)} | {_fmt(largest.get('mean_track_length'))} | "
                     f"{_fmt(largest.get('mean_reprojection_error'), '.3f')} |")
    return lines


def _table_matching(report: dict, rows: list[dict]) -> list[str]:
    lines: list[str] = []
    lines += ["", "Mutual nearest neighbours on the device, d2sfm against the dense baseline:", "",
              "| features per image | implementation | ms/pair | peak memory MB | matches | same matches |",
              "| ---: | --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(f"| {row['features']} | {row['implementation']} | {1e3 * row['seconds_per_pair']:.2f} | "
                     f"{row['peak_mb']:.0f} | {row['matches']} | {'yes' if row['same_matches'] else 'NO'} |")
    return lines


TABLES = {"parity": _table_parity, "throughput": _table_throughput, "precision": _table_precision,
          "reconstruction": _table_reconstruction, "matching": _table_matching}


def markdown(report: dict) -> str:
    sections = report.get("sections", {})
    environment = sections.get("environment", {}).get("figures", {})
    lines = [f"GPU acceptance run ({'smoke, figures not compared' if report.get('smoke') else 'full'}): "
             f"{environment.get('gpu', report.get('device', '?'))}, driver {environment.get('driver', 'n/a')}, CUDA "
             f"{environment.get('cuda', 'n/a')}, torch {environment.get('torch', '?')}, pycolmap "
             f"{environment.get('pycolmap') or 'absent'}, Ray {environment.get('ray') or 'absent'}; d2sfm "
             f"{environment.get('commit', '?')}; {report.get('date', '?')}. Command: `{report.get('command', '')}`.",
             "", "| section | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for name in SECTIONS:
        entry = sections.get(name)
        if entry:
            lines.append(f"| {name} | {entry['status']} | {entry['seconds']} | {entry.get('why') or ''} |")
        else:
            lines.append(f"| {name} | not run | | |")
    for name, table in TABLES.items():
        rows = _rows(report, name)
        if rows:
            lines += table(report, rows)
    for name, describe in (("ray", _describe_ray), ("refinement", _describe_refinement), ("dense", _describe_dense)):
        entry = sections.get(name, {})
        if entry.get("status") == "ok":
            lines += ["", describe(entry["figures"])]
    return "\n".join(lines) + "\n"


def _describe_ray(f: dict) -> str:
    seconds = f["seconds"]
    worker = "GPU worker" if f["device"].startswith("cuda") else "worker"
    if f["device"].startswith("cuda") and not f.get("ray_gpus", 1):
        worker = "worker (Ray found no GPU here: CPU-shaped)"
    return (f"Ray, one {worker}, against the plain commands on {f['photos']} photos at {f['edge']} px: "
            f"{'equal' if f['equal'] else 'NOT equal'} (keypoints within 0.01 px: at least "
            f"{f['min_keypoint_share']:.2%} per image, descriptor cosine >= {f['min_descriptor_cosine']:.5f}; "
            f"{f['pairs_with_equal_matches']} of {f['pairs']} pairs with the same matches, at least "
            f"{f['min_match_overlap']:.2%} shared per pair); through the Python API in one process: extraction "
            f"{seconds['plain']['extract']:.1f} s plain, {seconds['ray']['extract']:.1f} s Ray (its cluster's "
            f"start-up included); matching {seconds['plain']['match']:.1f} s plain, {seconds['ray']['match']:.1f} s "
            "Ray.")


def _describe_refinement(f: dict) -> str:
    share = f"{f['share_of_extraction']:.0%} of" if f["share_of_extraction"] is not None else "beside (not measured)"
    return (f"Refinement on the device ({f['pyramid']} fp32 model): database stage {f['database_seconds']:.1f} s "
            f"({f['keypoints_in_tracks']} keypoints in tracks), model stage {f['model_seconds']:.1f} s "
            f"({f['observations_aligned']} observations aligned): {share} the extraction of the same photos "
            f"({_fmt(f['extraction_seconds'], '.1f')} s).")


def _describe_dense(f: dict) -> str:
    return (f"Dense on the fp32 model (images at most {f['max_image_size']} px): undistortion "
            f"{f['undistort_seconds']:.1f} s, PatchMatch {f['patch_match_seconds']:.1f} s, fusion "
            f"{f['fusion_seconds']:.1f} s; {f['dense_points']:,} fused points.")


def render(report_path: Path, document: Path) -> None:
    """docs/benchmarks.md's GPU acceptance block from a report.json."""
    from benchmarks.__main__ import replace_block

    report = json.loads(report_path.read_text())
    text = document.read_text() if document.is_file() else "# Benchmarks\n"
    stamp = (f"Generated by `python benchmarks/gpu_acceptance.py --render {report_path.name}` from the report of "
             f"{report.get('date', '?')}.")
    scratch = document.with_name(f".{document.name}.part")
    scratch.write_text(replace_block(text, BLOCK, f"{stamp}\n\n{markdown(report)}"))
    scratch.replace(document)


# ------------------------------------------------------------------------------------------------ the command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="folder for report.json, report.md, handoff.tar and run.log")
    parser.add_argument("--stage", type=Path, default=None,
                        help="a folder packed by benchmarks/gpu_stage.py (default: ../shared's files)")
    parser.add_argument("--previous", type=Path, nargs="*", default=[],
                        help="folders of earlier calls' output (report.json, handoff.tar) to continue from")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                        help="default: every section not done in --previous")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny photos on the CPU: every section runs, figures are not compared (CI)")
    parser.add_argument("--render", type=Path, default=None, metavar="REPORT_JSON",
                        help="only rewrite docs/benchmarks.md's GPU acceptance block from this report")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="skip the sections that would start after this many seconds (a lent machine's limit)")
    parser.add_argument("--limit", type=float, default=None, metavar="SECONDS",
                        help="end the child commands (extract runs, the dense child) that would run past this many "
                             "seconds from the start; the report says what was cut. A lent machine's call is killed "
                             "whole at its timeout: keep this below it")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    parser.add_argument("--child-dense", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_dense:
        child_dense(json.loads(args.child_dense))
        return 0
    if args.render:
        if not args.render.is_file():
            parser.error(f"{args.render}: no such report; pass the report.json a run wrote")
        render(args.render, args.document)
        print(f"updated {args.document} from {args.render}", file=sys.stderr)
        return 0
    if args.output is None:
        parser.error("--output is required (the folder the report goes to)")
    started = time.perf_counter()
    device = args.device or ("cpu" if args.smoke else "cuda")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --smoke on a CPU, or on a GPU machine (docs/gpu.md)")
    args.output.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(args.output / "run.log")])
    report = {"device": device, "smoke": args.smoke, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "sections": {}, "_previous": list(args.previous)}
    for folder in args.previous:  # an earlier call's sections, kept unless run again
        earlier = folder / "report.json"
        if earlier.is_file():
            previous = json.loads(earlier.read_text())
            report["sections"].update(previous.get("sections", {}))
            if "environment" in previous.get("sections", {}):  # the other call's machine, kept beside this one's
                label = f"environment ({previous.get('date', 'earlier')})"
                report["sections"][label] = previous["sections"]["environment"]
    # after a first call, the sections it could not do (those that need pycolmap), unless told otherwise
    names = ([name for name in SECTIONS if name in args.sections] if args.sections  # in their order: later use earlier
             else [name for name in (COLMAP_SECTIONS if args.previous else SECTIONS)
                   if report["sections"].get(name, {}).get("status") != "ok"])
    if "environment" not in names:
        names.insert(0, "environment")
    inputs = Inputs.find(args.stage)
    for path in inputs.needed(names):
        if not path.exists():
            parser.error(f"{path}: missing; pack it with benchmarks/gpu_stage.py, or set D2SFM_SHARED to a copy of "
                         "../shared")
    precisions = ("fp32", "bf16") if device.startswith("cuda") else ("fp32",)
    work = Path(tempfile.mkdtemp(prefix="d2sfm-gpu-acceptance-"))
    ctx = Context(SMOKE if args.smoke else FULL, inputs, device, precisions, work, args.output, report,
                  None if args.limit is None else started + args.limit)
    torch.set_grad_enabled(False)
    try:
        run_sections(ctx, names, args.budget)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    failed = [name for name, entry in report["sections"].items() if entry["status"] == "failed"]
    if failed:
        log.error(f"failed sections: {', '.join(failed)} (report.json says why)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
