"""Mutual-nearest-neighbour matching speed and memory: d2sfm's chunked matcher against a plain dense baseline.

    python benchmarks/match_speed.py                      # 8k x 8k and 20k x 20k features, CPU
    python benchmarks/match_speed.py --device cuda

The baseline is what a script would write by hand: the full N x M similarity matrix, then the best column of
every row and the best row of every column. Both run on the same random unit descriptors (512-d, the D2 size) in
one run, each size in its own process so that peak memory is its own; results must be identical.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def dense_baseline(d0: torch.Tensor, d1: torch.Tensor):
    similarity = d0 @ d1.T
    forward = similarity.argmax(dim=1)
    backward = similarity.argmax(dim=0)
    rows = torch.arange(len(d0), device=d0.device)
    mutual = backward[forward] == rows
    return torch.stack([rows[mutual], forward[mutual]], dim=1)


def measure(spec: dict) -> dict:
    from d2sfm.matching.mnn import mutual_nearest_neighbours

    device = torch.device(spec["device"])
    generator = torch.Generator().manual_seed(0)
    n = spec["features"]
    d0 = torch.nn.functional.normalize(torch.randn(n, 512, generator=generator), dim=1).to(device)
    d1 = torch.nn.functional.normalize(d0 + 0.5 * torch.randn(n, 512, generator=generator).to(device), dim=1)
    method = dense_baseline if spec["impl"] == "dense" else (lambda a, b: mutual_nearest_neighbours(a, b)[0])

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    result = method(d0, d1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronise()
    start = time.perf_counter()
    repeats = spec["repeats"]
    for _ in range(repeats):
        result = method(d0, d1)
    synchronise()
    seconds = (time.perf_counter() - start) / repeats
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"seconds": seconds, "peak_mb": peak, "matches": result.cpu().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", type=int, nargs="+", default=[8000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    print(f"device: {args.device} ({torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'CPU'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| features per image | implementation | s/pair | pairs/s | speed-up | peak memory (MB) | same matches |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for n in args.features:
        results = {}
        for impl in ("dense", "d2sfm"):
            spec = {"impl": impl, "features": n, "device": args.device, "repeats": args.repeats}
            output = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                    capture_output=True, text=True).stdout
            results[impl] = json.loads(output.strip().splitlines()[-1])
        same = results["dense"]["matches"] == results["d2sfm"]["matches"]
        for impl in ("dense", "d2sfm"):
            r = results[impl]
            speedup = results["dense"]["seconds"] / r["seconds"]
            print(f"| {n} x {n} | {impl} | {r['seconds']:.3f} | {1 / r['seconds']:.2f} | {speedup:.2f}x | "
                  f"{r['peak_mb']:.0f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
