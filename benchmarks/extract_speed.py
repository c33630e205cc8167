"""Extraction speed and memory: d2sfm against the original D2-Net code, side by side in one run.

    python benchmarks/extract_speed.py --reference /path/to/d2-net            # CPU, the reference images
    python benchmarks/extract_speed.py --images DIR --max-edge 1600 --device cuda --precision fp32 bf16 fp16

Every (implementation, pyramid) runs in its own child process, so its peak memory (RSS on the CPU, allocated memory
on a GPU) is its own. Each child first runs one warm-up image (on a GPU one of each size), then times every image.
Without ``--reference``, agreement is against d2sfm's exact fp32 run. The original code is imported from
``--reference`` (a local checkout of mihaidusmanu/d2-net; it needs matplotlib and imageio installed) at run time and
is never part of this repository. On a GPU it runs in fp32 with TF32 off, as d2sfm's fp32 does; PyTorch's default
would run its convolutions in TF32 (``--original-tf32`` adds that row). Current torch refuses one line of it on a
GPU (``fmap_pos[:, ids]`` indexes a CPU tensor with CUDA indices), so the benchmark hands it CPU indices at run time
(``original_on_current_torch``); nothing else of it changes. Outputs are compared with the original's: the share of
keypoints within 0.01, 0.5 and 1 px of one of the other's, both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SHARED, WEIGHTS  # noqa: E402

DEFAULT_IMAGES = SHARED / "reference" / "d2net_original_hed_vgg16"
AGREEMENT_PX = (0.01, 0.5, 1.0)
PYRAMIDS = {"SS": (1.0,), "MS": (0.5, 1.0, 2.0)}


def _load_images(folder: Path, limit: int, max_edge: int, max_sum_edges: int):
    from d2sfm.features.extractor import resize_for_network
    from d2sfm.io.images import list_images, read_image_bgr

    names = list_images(folder)[:limit]
    return names, [resize_for_network(read_image_bgr(folder / n), max_edge, max_sum_edges) for n in names]


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def original_on_current_torch(pyramid_module) -> None:
    """Make the original's ``process_multiscale`` run on a GPU under current torch: it indexes CPU tensors with
    the ids ``interpolate_dense_features`` returns on the GPU, which torch >= 2 refuses. Same ids, on the CPU."""
    interpolate = pyramid_module.interpolate_dense_features

    def with_cpu_ids(positions, features):
        descriptors, positions, ids = interpolate(positions, features)
        return descriptors, positions, ids.cpu()

    pyramid_module.interpolate_dense_features = with_cpu_ids


class Tf32:
    """Set PyTorch's TF32 switches (cuDNN convolutions, cuBLAS products) for a block, restoring them after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self):
        import torch

        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.enabled

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def run_child(spec: dict) -> dict:
    """Time one implementation on every image; return per-image seconds, keypoints, peak memory."""
    import torch

    torch.set_grad_enabled(False)
    names, images = _load_images(Path(spec["images"]), spec["limit"], spec["max_edge"], spec["max_sum_edges"])
    device = spec["device"]
    scales = PYRAMIDS[spec["pyramid"]]
    if spec["impl"] == "original":
        sys.path.insert(0, spec["reference"])
        import lib.pyramid as original_pyramid  # the reference checkout, imported at run time
        from lib.model_test import D2Net as OriginalD2Net

        original_on_current_torch(original_pyramid)
        model = OriginalD2Net(model_file=spec["weights"], use_relu=True, use_cuda=device.startswith("cuda"))
        mean = np.array([103.939, 116.779, 123.68], np.float32)

        def extract(image):
            tensor = torch.from_numpy((image.astype(np.float32) - mean).transpose(2, 0, 1).copy())[None]
            with Tf32(spec.get("tf32", False)):
                keypoints, _, _ = original_pyramid.process_multiscale(tensor.to(device), model, scales=list(scales))
            return keypoints[:, [1, 0]] + 0.5
    else:
        from d2sfm.features.extractor import D2Extractor, ExtractionConfig

        conv = "winograd" if spec["impl"] == "winograd" else "exact"
        config = ExtractionConfig(scales=scales, conv=conv, precision=spec["precision"],
                                  max_edge=spec["max_edge"], max_sum_edges=spec["max_sum_edges"])
        extractor = D2Extractor(spec["weights"], config, device)

        def extract(image):
            return extractor.extract_batch([image], [image.shape[:2]])[0].keypoints

    def synchronise():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # warm-up: allocator, oneDNN / cuDNN kernel selection; on a GPU once per input size, since each new size
    # loads and selects its own kernels
    sizes = {image.shape: image for image in images} if device.startswith("cuda") else {None: images[0]}
    for image in sizes.values():
        extract(image)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    from d2sfm.features.pyramid import pyramid_gflop

    seconds, keypoints = [], []
    gflop = [pyramid_gflop(*image.shape[:2], scales) for image in images]
    for image in images:
        synchronise()
        start = time.perf_counter()
        points = extract(image)
        synchronise()
        seconds.append(time.perf_counter() - start)
        keypoints.append(np.asarray(points, dtype=np.float64).tolist())
    return {"seconds": seconds, "keypoints": keypoints, "peak_mb": _peak_memory_mb(device), "gflop": gflop,
            "size": [list(images[0].shape[:2])], "names": names}


def agreement_shares(ours: list, theirs: list) -> dict[float, tuple[float, float]]:
    """For each distance in AGREEMENT_PX: (share of our keypoints within it of one of theirs, and the reverse),
    pooled over the images."""
    from d2sfm.evaluation.parity import agreement

    pooled = {distance: [0, 0] for distance in AGREEMENT_PX}
    counts = [0, 0]
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, np.float64).reshape(-1, 2), np.asarray(b, np.float64).reshape(-1, 2)
        counts[0], counts[1] = counts[0] + len(a), counts[1] + len(b)
        if not (len(a) and len(b)):
            continue
        result = agreement(a, b)
        for distance in AGREEMENT_PX:
            pooled[distance][0] += int(np.sum(result.ours_distance <= distance))
            pooled[distance][1] += int(np.sum(result.theirs_distance <= distance))
    return {d: (ours_in / max(counts[0], 1), theirs_in / max(counts[1], 1)) for d, (ours_in, theirs_in) in
            pooled.items()}


def matrix_product_gflops(device: str, size: int = 4096, repeats: int = 5) -> float:
    """The machine's fp32 matrix-product rate (TF32 off on a GPU): what the best direct-convolution kernels
    approach, so the ceiling for any implementation that does the network's full arithmetic."""
    import torch

    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    with Tf32(False) if device.startswith("cuda") else nullcontext():
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def print_arithmetic_bound(runs: list[dict], device: str) -> None:
    """How fast an implementation that does all of the network's arithmetic could be, at best, against the
    original: its backbone FLOPs at the machine's matrix-product rate, with detection taken as free."""
    rate = matrix_product_gflops(device)
    print(f"\nfp32 matrix-product rate of this machine: {rate:.0f} GFLOP/s. At that rate, with detection free, an "
          "implementation doing the full convolution arithmetic needs at least:")
    for pyramid in dict.fromkeys(run["pyramid"] for run in runs):
        baseline = next((r for r in runs if r["impl"] == "original" and r["pyramid"] == pyramid), None)
        some = next(r for r in runs if r["pyramid"] == pyramid)
        floor = float(np.mean(some["gflop"])) / rate
        versus = f", i.e. at most {np.mean(baseline['seconds']) / floor:.2f}x the original" if baseline else ""
        print(f"- {pyramid}: {np.mean(some['gflop']):.0f} GFLOP/image -> {floor:.3f} s/image{versus}")


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{model}, {os.cpu_count()} cores, {platform.system()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images (default: the "
                        "640-px reference images of ../shared)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--reference", type=Path, default=None,
                        help="local checkout of the original D2-Net code: adds it as the baseline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], help="GPU: fp32 bf16 fp16")
    parser.add_argument("--impl", nargs="+", default=None,
                        help="implementations to run (default: exact, plus winograd on the CPU)")
    parser.add_argument("--pyramid", nargs="+", default=["SS", "MS"], choices=list(PYRAMIDS))
    parser.add_argument("--limit", type=int, default=1000, help="at most this many images")
    parser.add_argument("--max-edge", type=int, default=1600)
    parser.add_argument("--max-sum-edges", type=int, default=2800)
    parser.add_argument("--original-tf32", action="store_true",
                        help="GPU: also time the original under PyTorch's default TF32 convolutions")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # internal: one measurement, in its own process
        spec = json.loads(args.child.read_text())
        args.child.write_text(json.dumps(run_child(spec)))
        return

    impls = args.impl or (["exact", "winograd"] if args.device == "cpu" else ["exact"])
    runs = []
    for pyramid in args.pyramid:
        original = [("original", "fp32", False)] + ([("original", "tf32", True)] if args.original_tf32 else [])
        candidates = (original if args.reference else []) + [
            (impl, precision, False) for impl in impls for precision in args.precision
        ]
        for impl, precision, tf32 in candidates:
            spec = {"impl": impl, "precision": precision, "tf32": tf32, "pyramid": pyramid, "device": args.device,
                    "images": str(args.images), "weights": str(args.weights), "limit": args.limit,
                    "reference": str(args.reference) if args.reference else None,
                    "max_edge": args.max_edge, "max_sum_edges": args.max_sum_edges}
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                json.dump(spec, handle)
            subprocess.run([sys.executable, __file__, "--child", handle.name], check=True)
            result = json.loads(Path(handle.name).read_text())
            os.unlink(handle.name)
            runs.append({**spec, **result})
            print(f"  {pyramid} {impl} {precision}: {np.mean(result['seconds']):.3f} s/image", file=sys.stderr)

    print(f"\nmachine: {machine_description(args.device)}")
    print(f"images: {args.images} ({len(runs[0]['seconds'])} images, network input "
          f"{runs[0]['size'][0][1]}x{runs[0]['size'][0][0]} for the first)\n")
    within = " | ".join(f"within {d:g} px" for d in AGREEMENT_PX)
    print(f"| pyramid | implementation | precision | s/image | images/s | speed-up vs original | peak memory (MB) "
          f"| keypoints/image | {within} | effective GFLOP/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(AGREEMENT_PX) + "---: |")
    for run in runs:
        baseline = next((r for r in runs if r["impl"] == "original" and r["pyramid"] == run["pyramid"]
                         and not r["tf32"]), None)
        # without the original, agreement is against d2sfm's exact fp32 run: a reduced precision that loses
        # keypoints shows there, not only as speed
        reference_run = baseline or next((r for r in runs if r["impl"] == "exact" and r["precision"] == "fp32"
                                          and r["pyramid"] == run["pyramid"] and r is not run), None)
        mean = float(np.mean(run["seconds"]))
        ratio = f"{np.mean(baseline['seconds']) / mean:.2f}x" if baseline else "n/a"
        shares = agreement_shares(run["keypoints"], reference_run["keypoints"]) if reference_run else {}
        keypoints = np.mean([len(points) for points in run["keypoints"]])
        cells = " | ".join(f"{100 * shares[d][0]:.2f}% / {100 * shares[d][1]:.2f}%" if shares else "n/a"
                           for d in AGREEMENT_PX)
        print(f"| {run['pyramid']} | {run['impl']} | {run['precision']} | {mean:.3f} | {1 / mean:.2f} | {ratio} | "
              f"{run['peak_mb']:.0f} | {keypoints:.0f} | {cells} | {np.mean(run['gflop']) / mean:.0f} |")
    if args.reference:
        print("\nAgreement: the share of our keypoints within the distance of one of the original's / the share of "
              "the original's within it of one of ours, over all images. The original runs in fp32"
              + (" with TF32 off (precision 'tf32': PyTorch's default, TF32 convolutions)" if args.device != "cpu"
                 else "") + ".")
    else:
        print("\nAgreement (no --reference): against d2sfm's exact fp32 run of the same pyramid; the share of this "
              "run's keypoints within the distance of one of fp32's / the reverse, over all images.")
    print_arithmetic_bound(runs, args.device)
    if args.json:
        args.json.write_text(json.dumps(runs))


if __name__ == "__main__":
    main()
