"""Where the time of a long loop goes: wall seconds per named stage, for ``--timings`` and the benchmarks.

On a GPU, kernels run asynchronously and a stage's Python code returns long before its work is done; a clock made
for a CUDA device therefore waits for the GPU at each stage boundary, so that the work is charged to the stage that
launched it. That wait costs a little overlap, which is why the clock is only made when timings are asked for.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class StageClock:
    """Accumulates the wall time spent inside ``with clock("name"):`` blocks (blocks of one name may nest in others
    of another name; each name's total is its own)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else None
        self.cuda_device = device if device is not None and device.type == "cuda" else None
        self.seconds: dict[str, float] = defaultdict(float)

    def _synchronise(self) -> None:
        if self.cuda_device is not None:
            torch.cuda.synchronize(self.cuda_device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._synchronise()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronise()
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (a loader worker's decoding, a writer thread)."""
        self.seconds[name] += seconds


def timed(clock: StageClock | None, name: str):
    """``clock(name)`` when there is a clock, else a block that measures nothing."""
    return clock(name) if clock is not None else contextlib.nullcontext()
