"""How many same-size images go into one network call on a GPU: at most ``--batch-size``, and no more than fit in
a memory budget (``--gpu-memory``), learned from the measured peak of the first call at each input size.

The images of a batch share one size and nothing is padded, so the batch size changes a feature at most by the
convolution's rounding (cuDNN may pick another algorithm for another batch size): the batch is free to follow
memory. It has to. Issue 13 measured 3.4 GiB per multi-scale 1600-px photo in bf16 and 6.9 GiB in fp32 on an
H100: the fixed batch of four that suits single scale (about 1 GiB per photo) needs 14 GiB in bf16 and 27 GiB in
fp32 at multi-scale, more than most GPUs have.
The first call at a new size runs one image and measures it; later calls take as many as the budget holds. If
the GPU still runs out of memory (another process, fragmentation), the batch is halved and retried; one image
that does not fit alone is left out, as an image that failed (the command lists it and exits with status 1).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from d2sfm.errors import D2sfmError
from d2sfm.features.settings import DEFAULT_GPU_MEMORY_GIB

GIB = 2**30
DEVICE_SHARE = 0.8  # never plan for more than this share of the GPU's memory

Item = TypeVar("Item")


# How an allocation failure is worded where it is not PyTorch's own torch.OutOfMemoryError. On the CPU: PyTorch's
# allocator and oneDNN (``DefaultCPUAllocator: can't allocate memory: you tried to allocate ... bytes``), which a
# process under a memory limit (ulimit -v, a container) sees. On a GPU, memory taken outside PyTorch's caching
# allocator: a kernel's or a library's own cudaMalloc (``CUDA error: out of memory``, an AcceleratorError in
# recent PyTorch), cuDNN's workspace (``CUDNN_STATUS_ALLOC_FAILED``; cuDNN 9:
# ``CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED``) and cuBLAS's (``CUBLAS_STATUS_ALLOC_FAILED``).
ALLOCATION_FAILURES = ("can't allocate memory", "could not allocate", "cannot allocate memory", "failed to allocate",
                       "out of memory", "alloc_failed", "allocation_failed")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory: PyTorch's own error (GPU), Python's MemoryError (numpy),
    or an error of another allocator worded as one (ALLOCATION_FAILURES)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(words in str(error).lower() for words in ALLOCATION_FAILURES)


LOCAL_ADVICE = "lower --max-edge or --scales, use --precision bf16, or run with --device cpu"
CLUSTER_ADVICE = "lower --max-edge or --scales, or use --precision bf16"  # Ray workers take the GPU when they see one
CPU_ADVICE = "use fewer or smaller --scales or a lower --max-edge, or free memory"


def does_not_fit(name: str, shape: tuple, advice: str = LOCAL_ADVICE) -> str:
    """The one-line failure of an image whose network input (``shape``: height, width, ...) is too large alone."""
    return f"{name}: does not fit in the GPU's memory even alone (network input {shape[1]}x{shape[0]}); {advice}"


def out_of_memory(name: str, shape: tuple, scales: Sequence[float], advice: str = CPU_ADVICE) -> str:
    """The one-line failure of an image whose extraction ran out of the machine's (CPU) memory."""
    shown = " ".join(f"{scale:g}" for scale in scales)
    return (f"{name}: ran out of memory in the network (network input {shape[1]}x{shape[0]}, --scales {shown}); "
            f"{advice}")


class MemoryBoundedBatches:
    """Per-size batch limits for one extraction run on one device; on the CPU the limit is simply ``most``."""

    def __init__(self, device: torch.device, most: int, budget_bytes: int | None = None) -> None:
        if most < 1:
            raise D2sfmError("--batch-size must be >= 1")
        self.device, self.most, self.budget = device, most, budget_bytes
        self.limits: dict[tuple, int] = {}
        self.peak_bytes = 0  # the run's peaks, kept across the resets that measure each new size
        self.peak_reserved_bytes = 0

    @classmethod
    def for_device(cls, device: torch.device, most: int,
                   budget_gib: float | None = DEFAULT_GPU_MEMORY_GIB) -> MemoryBoundedBatches:
        """Batches for an extraction on ``device``: a budget on a GPU (capped at 80% of its memory), none on the
        CPU, where batching gains nothing and memory is not the limit."""
        if budget_gib is not None and not budget_gib > 0:  # also refuses NaN
            raise D2sfmError("--gpu-memory must be a positive number of GiB")
        if device.type != "cuda" or budget_gib is None:
            return cls(device, most)
        total = torch.cuda.get_device_properties(device).total_memory
        return cls(device, most, int(min(budget_gib * GIB, DEVICE_SHARE * total)))

    def limit(self, shape: tuple) -> int:
        """Images of ``shape`` to put in the next call: one to measure a new size, then what the budget holds."""
        if self.budget is None:
            return self.most
        return self.limits.get(tuple(shape), 1)

    def learn(self, shape: tuple, images: int, before_bytes: int, peak_bytes: int) -> int:
        """Set the limit of ``shape`` from one call's memory: ``images`` took ``peak - before`` above what was
        allocated before it. Returns the new limit."""
        per_image = max(1, peak_bytes - before_bytes) / images
        fit = int((self.budget - before_bytes) // per_image)
        self.limits[tuple(shape)] = max(1, min(self.most, fit))
        return self.limits[tuple(shape)]

    def run(self, shape: tuple, items: Sequence[Item], extract: Callable[[Sequence[Item]], list]) -> list:
        """``extract(items)``, measuring the first call at a size and splitting a batch that runs out of memory;
        the result of an item that does not fit even alone is None (see ``does_not_fit``). Without a budget (the
        CPU) a batch that runs out of memory is retried one image at a time, and an image that does not fit alone
        is None too (see ``out_of_memory``): one failed image, not a failed run."""
        if self.budget is None:
            return self._run_unbounded(items, extract)
        shape = tuple(shape)
        measuring = shape not in self.limits and self.device.type == "cuda"
        if measuring:
            torch.cuda.synchronize(self.device)
            self.peak_bytes, self.peak_reserved_bytes = self._peaks()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        results = _unless_out_of_memory(extract, items)
        if results is None:  # give the failed call's blocks back (reference cycles first) before a retry
            self._release()
            if len(items) == 1:
                return [None]
            self.limits[shape] = min(self.limits.get(shape, self.most), len(items) // 2)
            done: list = []
            while len(done) < len(items):  # in calls of the limit, which a further error lowers again
                done += self.run(shape, items[len(done):len(done) + self.limits[shape]], extract)
            return done
        if measuring:
            torch.cuda.synchronize(self.device)
            self.learn(shape, len(items), before, torch.cuda.max_memory_allocated(self.device))
        return results

    def _run_unbounded(self, items: Sequence[Item], extract: Callable[[Sequence[Item]], list]) -> list:
        results = _unless_out_of_memory(extract, items)
        if results is not None:
            return results
        self._release()
        if len(items) == 1:
            return [None]
        return [result for item in items for result in self._run_unbounded([item], extract)]

    def _release(self) -> None:
        """Give a failed call's memory back: its reference cycles first, then (on a GPU) the allocator's cache."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_peak_bytes(self) -> tuple[int, int] | None:
        """The run's peak GPU memory (None on the CPU): what tensors held, and what PyTorch's caching allocator had
        reserved from the GPU, which is what the process holds beyond the CUDA context (a few hundred MB) and what
        a memory goal has to count: the allocator keeps freed blocks and rounds allocations up."""
        if self.device.type != "cuda":
            return None
        return self._peaks()

    def _peaks(self) -> tuple[int, int]:
        return (max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device)),
                max(self.peak_reserved_bytes, torch.cuda.max_memory_reserved(self.device)))


def _unless_out_of_memory(extract: Callable[[Sequence[Item]], list], items: Sequence[Item]) -> list | None:
    """``extract(items)``, or None when it ran out of memory (the caller retries once this frame's references to
    the failed call's tensors are gone). Any other error goes on."""
    try:
        return extract(items)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError, cuDNN's workspace, the CPU allocator
        if not is_out_of_memory(error):
            raise
    return None
