"""The Ray backend of ``d2sfm.pipeline.backends``: the same two methods as the single-process one, each spreading
its items over the workers of a cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from d2sfm.cluster.extract import extract_on_cluster
from d2sfm.cluster.match import match_on_cluster
from d2sfm.cluster.ray_backend import DEFAULT_BATCH_IMAGES, DEFAULT_BLOCK_PAIRS
from d2sfm.errors import D2sfmError
from d2sfm.features.settings import DEFAULT_GPU_MEMORY_GIB


class RayBackend:
    """``address``: "local" starts a cluster on this machine; "auto" or "ray://host:port" joins a running one.
    ``batch``: images (extraction) or pairs (matching) per task; None takes each kind's default."""

    def __init__(self, address: str, workers: int | None = None, cpus_per_worker: int = 1, batch: int | None = None,
                 gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB, progress: bool = True) -> None:
        self.address, self.workers, self.cpus_per_worker = address, workers, cpus_per_worker
        self.batch, self.gpu_memory_gib, self.progress = batch, gpu_memory_gib, progress

    def extract(self, root: Path, names, output: Path, weights: Path, config, settings: dict,
                descriptor_dtype=np.float16, overwrite: bool = False, timings: Path | None = None, method: str = "d2"):
        # timings: the stage clock runs inside the workers' processes; a cluster run reports none
        if method != "d2":
            raise D2sfmError(f"--ray runs D2 extraction; {method} features run in this process: leave out --ray")
        return extract_on_cluster(root, names, output, weights, config, settings, self.address,
                                  descriptor_dtype=descriptor_dtype, overwrite=overwrite, workers=self.workers,
                                  cpus_per_worker=self.cpus_per_worker,
                                  batch_images=self.batch or DEFAULT_BATCH_IMAGES, progress=self.progress,
                                  gpu_memory_gib=self.gpu_memory_gib)

    def match(self, features: Path, pairs, output: Path, min_similarity=None, ratio=None, overwrite=False,
              keep_unrecorded=False) -> int:
        return match_on_cluster(features, pairs, output, self.address, min_similarity, ratio, overwrite=overwrite,
                                workers=self.workers, cpus_per_worker=self.cpus_per_worker,
                                block_pairs=self.batch or DEFAULT_BLOCK_PAIRS, progress=self.progress,
                                keep_unrecorded=keep_unrecorded)
