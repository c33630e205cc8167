"""How decoded photos reach the network loop from the loader workers: pickled numpy arrays through a pipe (the
baseline, as before 2026-11-24) against tensors handed over through shared memory (``PreparedImage.__reduce__``).
The loader's rate, and the main thread's CPU time per photo, which the network loop needs on a GPU (it launches
the kernels, detects and queues the writes).

    python benchmarks/loader_handover.py                 # 120 photos of 1600x1200, 1 and 2 loader workers
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.extract_remedies import uniform_photos  # noqa: E402
from benchmarks.paths import SACRE_COEUR  # noqa: E402
from d2sfm.features.extraction import _as_is, _PreparedImages


@dataclass
class PickledImage:
    """The baseline's item: what PreparedImage was before it crossed processes as a tensor."""

    name: str
    image: np.ndarray | None


class PickledImages(_PreparedImages):
    def __getitem__(self, index: int) -> PickledImage:
        item = super().__getitem__(index)
        return PickledImage(item.name, item.image)


def loader_rate(dataset, workers: int) -> tuple[float, float]:
    """(photos/s, main thread's CPU ms per photo) over the dataset, after the first photo."""
    from torch.utils.data import DataLoader

    loader = iter(DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=workers, prefetch_factor=4))
    next(loader)
    start, cpu, count = time.perf_counter(), time.thread_time(), 0
    for item in loader:
        count += item.image is not None
    return count / (time.perf_counter() - start), (time.thread_time() - cpu) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="default: 1 and the CPU count (<= 4)")
    args = parser.parse_args()

    from d2sfm.features.extractor import ExtractionConfig

    workers_list = args.workers or sorted({1, min(4, os.cpu_count() or 1)})
    config = ExtractionConfig(max_edge=max(args.width, args.height))
    print(f"{args.count} JPEG photos of {args.width}x{args.height} from {args.images}; {os.cpu_count()} CPU cores; "
          "the command's loader (read, decode, resize in workers)\n")
    print("| loader workers | hand-over | photos/s | main thread CPU per photo (ms) |")
    print("| ---: | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        names, _ = uniform_photos(args.images, Path(scratch), args.count, args.width, args.height)
        for workers in workers_list:
            for label, dataset in (("numpy, pickled through a pipe (baseline)",
                                    PickledImages(Path(scratch), names, config)),
                                   ("tensor, shared memory (now)", _PreparedImages(Path(scratch), names, config))):
                rate, cpu = loader_rate(dataset, workers)
                print(f"| {workers} | {label} | {rate:.1f} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
