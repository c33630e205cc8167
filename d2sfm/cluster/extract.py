"""D2 extraction on a Ray cluster (``d2sfm.extract --ray``): the same features.h5 as a single-process run.

HDF5 has one writer per file, so each worker writes its images into a shard of its own,
``features.h5.shards/worker-K.h5``, atomically per image as features.h5 is written. When every batch is done the
driver moves the shards' images into features.h5 (again atomically per image) and deletes the shards. A worker
whose process dies is restarted by Ray with the same shard and its batch retried: the images it had finished are
in its shard and skipped, the one it was writing is left as scratch that reopening removes. A run killed as a whole
leaves the shards; the next run moves their images into features.h5 before it extracts anything, so nothing
finished is redone or lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from d2sfm.cluster.ray_backend import (
    DEFAULT_BATCH_IMAGES,
    collect_left_shards,
    collect_shards,
    discard_shards,
    run_sharded,
)
from d2sfm.features.gpu_batching import CLUSTER_ADVICE
from d2sfm.features.settings import DEFAULT_GPU_MEMORY_GIB, ExtractionConfig
from d2sfm.io.h5 import FeatureWriter
from d2sfm.runtime.allocator import keep_freed_memory
from d2sfm.runtime.device import resolve_device


class ExtractionWorker:
    """A Ray actor's state: the network on the worker's device and its shard. Each task runs the single-process
    extraction loop (``d2sfm.features.extraction.extract_features``) on its images, decoding in the actor:
    batches under the GPU memory budget, writes in a thread, an image too large for the GPU listed as failed."""

    def __init__(self, weights: str, config: dict, shard: str, settings: dict, descriptor_dtype: str,
                 gpu_memory_gib: float, threads: int, device: str) -> None:
        import torch

        from d2sfm.features.extraction import default_loading
        from d2sfm.features.extractor import D2Extractor
        from d2sfm.features.gpu_batching import MemoryBoundedBatches

        torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        keep_freed_memory()  # a process of d2sfm's own, as a command's is
        device = resolve_device(device)  # the worker shape's: a GPU worker sees its GPU as cuda:0
        self.extractor = D2Extractor(weights, ExtractionConfig(**config), device)
        self.shard, self.settings = Path(shard), settings
        self.descriptor_dtype = np.dtype(descriptor_dtype)
        self.batch_size, _ = default_loading(device)
        self.batches = MemoryBoundedBatches.for_device(device, self.batch_size, gpu_memory_gib)  # limits kept by task
        FeatureWriter(shard, settings, descriptor_dtype=self.descriptor_dtype)  # creates the shard, checks settings

    def extract(self, root: str, names: Sequence[str]) -> list[tuple[str, str | None]]:
        """Extract and write each image not yet in the shard; returns (name, error or None) for each."""
        from d2sfm.features.extraction import extract_features

        _, failures = extract_features(Path(root), names, self.shard, self.extractor, self.settings,
                                       descriptor_dtype=self.descriptor_dtype, batch_size=self.batch_size,
                                       workers=0, progress=False, batches=self.batches,
                                       too_large_advice=CLUSTER_ADVICE)
        errors = dict(failures)
        return [(name, errors.get(name)) for name in names]


def extract_on_cluster(
    root: Path, names: Sequence[str], output: Path, weights: Path, config: ExtractionConfig, settings: dict,
    address: str, descriptor_dtype=np.float16, overwrite: bool = False, workers: int | None = None,
    cpus_per_worker: int = 1, batch_images: int = DEFAULT_BATCH_IMAGES, progress: bool = True,
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB,
) -> tuple[int, list[tuple[str, str]]]:
    """Extract every image not yet in ``output`` with Ray workers, ``batch_images`` per task; returns
    (extracted now, [(name, error)])."""
    if overwrite:
        discard_shards(output)
    writer = FeatureWriter(output, settings, descriptor_dtype=descriptor_dtype, overwrite=overwrite)
    recovered = collect_left_shards(output, writer.copy_from, "image(s) an interrupted run had finished")
    pending = [name for name in names if name not in writer.done]
    if not pending:
        return recovered, []
    folder = str(root.resolve())
    results = run_sharded(
        address, workers, cpus_per_worker, output, ExtractionWorker,
        lambda shard, threads, device: (str(weights), config.as_dict(), shard, writer.settings,
                                        writer.descriptor_dtype.name, gpu_memory_gib, threads, device),
        pending, batch_images, lambda actor, batch: actor.extract.remote(folder, batch), "extracting D2 features",
        "img", progress)
    failures = [(name, error) for name, error in results if error is not None]
    collect_shards(output, writer.copy_from)
    return recovered + len(pending) - len(failures), failures
