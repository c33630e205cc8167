"""Where one batch's time goes, by operator: the network's convolutions against everything around them (layout
copies, the pyramid's upsample-and-add, detection, pooling, transfers). PyTorch's profiler over a few batches of
same-size photos after a warm-up, for each pyramid and precision; the top operators by device time (CUDA) or by
CPU time (CPU), per image.

    python benchmarks/extract_profile.py --device cuda                     # 1600x1200 photos, batch 4, SS and MS
    python benchmarks/extract_profile.py --width 320 --height 240 --batch 1 --pyramid SS   # a CPU check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.extract_remedies import uniform_photos  # noqa: E402
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402


def profile(extractor, images, batch: int, batches: int, device) -> list[tuple[str, float, int]]:
    """(operator, milliseconds per image, calls per batch), most expensive first."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def run(first: int) -> None:
        chosen = [images[(first + k) % len(images)] for k in range(batch)]
        extractor.extract_batch(chosen, [image.shape[:2] for image in chosen])

    for index in range(2):  # warm-up: cuDNN's choices, caches
        run(index * batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as profiler:
        for index in range(batches):
            run(index * batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    on_device = device.type == "cuda"
    rows = []
    for event in profiler.key_averages():
        microseconds = event.self_device_time_total if on_device else event.self_cpu_time_total
        if microseconds > 0:
            rows.append((event.key, microseconds / 1000 / (batch * batches), round(event.count / batches)))
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="images per call (default 4, the GPU default)")
    parser.add_argument("--batches", type=int, default=3, help="profiled calls (default 3)")
    parser.add_argument("--pyramid", nargs="+", default=["SS", "MS"], choices=["SS", "MS"])
    parser.add_argument("--precision", nargs="+", default=None, help="default: fp32 bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--top", type=int, default=15, help="operators shown per configuration (default 15)")
    args = parser.parse_args()

    import torch

    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
    from d2sfm.io.images import read_image_bgr

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    precisions = args.precision or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    with tempfile.TemporaryDirectory() as scratch:
        names, distinct = uniform_photos(args.images, Path(scratch), args.batch, args.width, args.height)
        images = [read_image_bgr(Path(scratch) / name) for name in names[:distinct]]
    clock = "device (CUDA kernels)" if device.type == "cuda" else "CPU"
    print(f"{args.batches} calls of {args.batch} photos of {args.width}x{args.height} after 2 warm-up calls; device "
          f"{device}; {clock} time per image, by operator (self time: a kernel is counted once, under the operator "
          "that launched it)\n")
    for pyramid in args.pyramid:
        for precision in precisions:
            config = ExtractionConfig(scales=MULTI_SCALE if pyramid == "MS" else SINGLE_SCALE,
                                      max_edge=max(args.width, args.height), precision=precision)
            extractor = D2Extractor(args.weights, config, device)
            rows = profile(extractor, images, args.batch, args.batches, device)
            total = sum(row[1] for row in rows)
            print(f"**{pyramid} {precision}**: {total:.1f} ms per image in all\n")
            print("| operator | ms per image | share | calls per batch |")
            print("| --- | ---: | ---: | ---: |")
            for name, milliseconds, calls in rows[:args.top]:
                print(f"| `{name}` | {milliseconds:.2f} | {milliseconds / total:.1%} | {calls} |")
            print()
            del extractor
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
