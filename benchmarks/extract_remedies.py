"""Which GPU remedies pay (issue 13, point 3): the extraction loop of ``python -m d2sfm.extract`` (decoding in
loader workers, network and detection, writing in a thread) on the same photos, one change at a time and all
together, side by side in one run; then where decoding could go.

    python benchmarks/extract_remedies.py --device cuda --pyramid SS          # 64 photos of 1600x1200, fp32 and bf16
    python benchmarks/extract_remedies.py --count 6 --width 320 --height 240  # the CPU run (few remedies apply)

The photos are the ``--images`` folder's, scaled and centre-cropped to one size (so that a compiled backbone is
compiled once, and its cost shows apart in the warm-up column) and saved as JPEG (quality 95), repeated under
new names up to ``--count``. Every variant first extracts the distinct photos untimed (CUDA start-up, cuDNN's
choices, compilation), then all of them, timed from the first image to the last write. Agreement is the share of
a variant's keypoints within 0.01, 0.5 and 1 px of the baseline's at the same precision; a remedy that changes
nothing but speed agrees at 0.01 px up to the convolution's rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402

DISTANCES = (0.01, 0.5, 1.0)


@dataclass(frozen=True)
class Variant:
    label: str
    tuning: dict = field(default_factory=dict)  # GpuTuning fields
    workers: int | None = None  # loader workers; None: the command's default
    cuda_only: bool = True
    low_precision_only: bool = False  # only meaningful in bf16/fp16


def variants(cpus: int) -> list[Variant]:
    more_workers = min(max(8, cpus // 2), cpus)
    return [
        Variant("baseline: the command's defaults", cuda_only=False),
        Variant(f"{more_workers} loader workers", workers=more_workers, cuda_only=False),
        Variant("pinned input", {"pinned_input": True}),
        Variant("channels-last maps", {"maps_layout": "channels_last"}),
        Variant("maps in the working precision", {"working_precision_maps": True}, low_precision_only=True),
        Variant("cuDNN benchmark mode (times its algorithms per input size)", {"cudnn_benchmark": True}),
        Variant("compiled backbone (torch.compile)", {"compile": "default"}),
        Variant("compiled, CUDA graphs (reduce-overhead)", {"compile": "reduce-overhead"}),
        Variant("all of the above but CUDA graphs",
                {"pinned_input": True, "maps_layout": "channels_last", "working_precision_maps": True,
                 "cudnn_benchmark": True, "compile": "default"}, workers=more_workers),
    ]


def uniform_photos(source: Path, folder: Path, count: int, width: int, height: int) -> tuple[list[str], int]:
    """``count`` JPEGs of exactly ``width`` x ``height``, cycling through the photos of ``source``; returns their
    names and how many of them are distinct."""
    from d2sfm.io.images import list_images, read_image_bgr

    encoded = []
    for name in list_images(source):
        image = read_image_bgr(source / name)
        scale = max(width / image.shape[1], height / image.shape[0])
        size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
        scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
        crop = scaled[top:top + height, left:left + width]
        encoded.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        names.append(f"photo_{index:04d}.jpg")
        (folder / names[-1]).write_bytes(encoded[index % len(encoded)])
    return names, min(count, len(encoded))


def run_variant(spec: dict) -> dict:
    """Child process: warm up on ``spec['warm']``, then time the extraction loop over ``spec['names']``.

    One process per variant: a compiled backbone's threads and caches do not reach the next variant, and loader
    workers are never forked from a process that compiled before (Inductor compiles in this thread only). The
    warm-up and the timed run share one set of batch limits, so the timed run measures nothing and, with images
    of one size, meets no batch shape the warm-up did not compile."""
    import torch

    from d2sfm.features.extraction import default_loading, extract_features
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig, GpuTuning
    from d2sfm.features.gpu_batching import MemoryBoundedBatches

    torch.set_grad_enabled(False)
    torch._inductor.config.compile_threads = 1
    device = torch.device(spec["device"])
    config = ExtractionConfig(**spec["config"])
    photos, output = Path(spec["photos"]), Path(spec["output"])
    batch_size, workers = default_loading(device)
    workers = spec["workers"] if spec["workers"] is not None else workers
    extractor = D2Extractor(spec["weights"], config, device, GpuTuning(**spec["tuning"]))
    batches = MemoryBoundedBatches.for_device(device, batch_size)
    start = time.perf_counter()
    extract_features(photos, spec["warm"], output.with_name(output.stem + "-warm.h5"), extractor, config.as_dict(),
                     batch_size=batch_size, workers=workers, progress=False, batches=batches)
    warm_up = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    extract_features(photos, spec["names"], output, extractor, config.as_dict(), batch_size=batch_size,
                     workers=workers, progress=False, batches=batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peaks = ([torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)]
             if device.type == "cuda" else None)
    return {"seconds": seconds, "warm_up": warm_up, "peaks": peaks, "workers": workers,
            "limits": sorted(set(batches.limits.values())) or [batch_size]}


def run_in_child(spec: dict) -> dict:
    """One variant in a process of its own; {"error": last line} when it fails (a remedy this machine cannot run,
    such as torch.compile without a C compiler, is a row that says so, not the end of the benchmark)."""
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return {"error": lines[-1][:200] if lines else f"exit status {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def agreement_with(baseline: Path, output: Path, names: list[str]) -> tuple[list[float], float]:
    """Mean share of ``output``'s keypoints within each of DISTANCES of ``baseline``'s, and keypoints/image."""
    from d2sfm.evaluation.parity import agreement
    from d2sfm.io.h5 import read_features

    shares, counts = [], []
    for name in names:
        ours, theirs = read_features(output, name), read_features(baseline, name)
        result = agreement(ours.keypoints, theirs.keypoints)
        shares.append([result.ours_within(d) for d in DISTANCES])
        counts.append(len(ours.keypoints))
    return list(np.mean(shares, axis=0)), float(np.mean(counts))


def decoding_table(photos: Path, names: list[str], device, config, cpus: int) -> list[str]:
    """Decoding and resizing as the loader workers do it (OpenCV, N processes) against nvJPEG on the GPU."""
    import torch
    from torch.utils.data import DataLoader

    from d2sfm.features.extraction import _as_is, _PreparedImages

    rows = []
    for workers in sorted({w for w in (1, 4, 8, 12) if w <= cpus} | {cpus}):
        loader = DataLoader(_PreparedImages(photos, names, config), batch_size=None, collate_fn=_as_is,
                            num_workers=workers, prefetch_factor=4)
        iterator = iter(loader)
        next(iterator)  # the workers are up
        start = time.perf_counter()
        count = sum(1 for _ in iterator)
        rate = count / (time.perf_counter() - start)
        rows.append(f"| OpenCV in {workers} loader worker(s): read, decode, resize, hand over (what the command "
                    f"does) | {rate:.1f} | the command's |")
    if device.type == "cuda":
        from torchvision.io import decode_jpeg

        from d2sfm.io.images import read_image_bgr

        data = [torch.frombuffer(bytearray((photos / name).read_bytes()), dtype=torch.uint8) for name in names]
        for batch in (1, 8):
            decode_jpeg(data[:batch], device=device)  # nvJPEG's start-up
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for first in range(0, len(data), batch):
                decoded = decode_jpeg(data[first:first + batch], device=device)
            torch.cuda.synchronize(device)
            rate = len(data) / (time.perf_counter() - start)
            cpu = torch.from_numpy(read_image_bgr(photos / names[-1])[:, :, ::-1].copy()).permute(2, 0, 1)
            difference = (decoded[-1].cpu().int() - cpu.int()).abs()
            rows.append(f"| nvJPEG on the GPU, {batch} per call (torchvision.io.decode_jpeg): decoding only, "
                        f"files already in memory, no resize | {rate:.1f} | "
                        f"{(difference > 0).float().mean():.1%} of values differ from OpenCV's, at most by "
                        f"{int(difference.max())} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR, help="photos to scale, crop and repeat")
    parser.add_argument("--count", type=int, default=64, help="photos in each timed run (default 64)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pyramid", nargs="+", default=["SS", "MS"], choices=["SS", "MS"])
    parser.add_argument("--precision", nargs="+", default=None, help="default: fp32 bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--only", nargs="+", default=None, metavar="N", type=int,
                        help="run only these variants (numbers as listed; 0 is the baseline and always runs)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(json.loads(args.child))))
        return

    import torch

    from d2sfm.features.extractor import ExtractionConfig
    from d2sfm.features.gpu_batching import DEFAULT_GPU_MEMORY_GIB
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE

    device = torch.device(args.device)
    cpus = os.cpu_count() or 1
    precisions = args.precision or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    chosen = [v for k, v in enumerate(variants(cpus)) if args.only is None or k == 0 or k in args.only]
    work = Path(tempfile.mkdtemp(prefix="d2sfm-remedies-"))
    try:
        budget = (f"{DEFAULT_GPU_MEMORY_GIB} GiB (at most 80% of the GPU)" if device.type == "cuda"
                  else "none (CPU)")
        names, distinct = uniform_photos(args.images, work / "photos", args.count, args.width, args.height)
        print(f"{len(names)} JPEG photos of {args.width}x{args.height} from {args.images}; device {device}; "
              f"{cpus} CPU cores; batch limit and loader workers: the command's defaults unless a row changes "
              f"them; memory budget {budget}\n")
        print("| pyramid | precision | variant | images/s | x baseline | warm-up (s) | images per call | "
              "peak GPU memory allocated / reserved (GiB) | keypoints/image | within 0.01 / 0.5 / 1 px of the "
              "baseline |")
        print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |")
        for pyramid in args.pyramid:
            for precision in precisions:
                config = ExtractionConfig(scales=MULTI_SCALE if pyramid == "MS" else SINGLE_SCALE,
                                          max_edge=max(args.width, args.height), precision=precision)
                baseline = None
                for index, variant in enumerate(chosen):
                    if (variant.cuda_only and device.type != "cuda") or (
                            variant.low_precision_only and precision == "fp32"):
                        continue
                    print(f"  {pyramid} {precision}: {variant.label}", file=sys.stderr)
                    output = work / f"{pyramid}-{precision}-{index}.h5"
                    row = run_in_child({
                        "device": args.device, "config": config.as_dict(), "photos": str(work / "photos"),
                        "names": names, "warm": names[:distinct], "output": str(output),
                        "weights": str(args.weights), "tuning": variant.tuning, "workers": variant.workers})
                    if "error" in row:
                        print(f"| {pyramid} | {precision} | {variant.label} | failed: {row['error']} |" + " |" * 6,
                              flush=True)
                        continue
                    row["output"] = output
                    baseline = baseline or row
                    shares, keypoints = agreement_with(baseline["output"], row["output"], names)
                    rate = len(names) / row["seconds"]
                    ratio = rate / (len(names) / baseline["seconds"])
                    peak = " / ".join(f"{b / 2**30:.2f}" for b in row["peaks"]) if row["peaks"] else "n/a"
                    print(f"| {pyramid} | {precision} | {variant.label} | {rate:.2f} | {ratio:.2f}x | "
                          f"{row['warm_up']:.1f} | {'/'.join(map(str, row['limits']))} | {peak} | {keypoints:.0f} | "
                          + " / ".join(f"{share:.2%}" for share in shares) + " |", flush=True)
        print("\nWhere decoding could go (decoding and resizing to the network's input, images/s):\n")
        print("| decoder | images/s | pixels |")
        print("| --- | ---: | --- |")
        config = ExtractionConfig(max_edge=max(args.width, args.height))
        for line in decoding_table(work / "photos", names, device, config, cpus):
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
