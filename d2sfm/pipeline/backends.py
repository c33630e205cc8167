"""Where extraction and matching run: in this process, or on a Ray cluster. Both backends have the same two
methods, so that the flows (the API, every pipeline, the extract and match commands) choose one in one place,
``backend_for``, and neither loop imports the other: the Ray backend (``d2sfm.cluster.backend``) runs the
single-process loops inside its workers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from d2sfm.config import RunConfig
from d2sfm.features.extraction import (
    LOOP_STAGE,
    STARTUP_STAGE,
    default_loading,
    extract_features,
    make_extractor,
    write_timings,
)
from d2sfm.features.gpu_batching import MemoryBoundedBatches
from d2sfm.features.settings import ExtractionConfig
from d2sfm.matching.matcher import match_pairs
from d2sfm.matching.pairs import Pair
from d2sfm.runtime.device import resolve_device
from d2sfm.runtime.stage_clock import StageClock, timed


class Backend(Protocol):
    def extract(self, root: Path, names: Sequence[str], output: Path, weights: Path, config: ExtractionConfig,
                settings: dict, descriptor_dtype=np.float16, overwrite: bool = False, timings: Path | None = None,
                method: str = "d2") -> tuple[int, list[tuple[str, str]]]:
        """Every image of ``names`` not yet in ``output`` with the ``method``'s extractor; returns (extracted now,
        [(name, error)])."""

    def match(self, features: Path, pairs: Sequence[Pair], output: Path, min_similarity: float | None = None,
              ratio: float | None = None, overwrite: bool = False, keep_unrecorded: bool = False) -> int:
        """Every pair not yet in ``output``; returns the pairs matched now (``keep_unrecorded``: match_pairs')."""


class LocalBackend:
    """This process, on ``run.device``: batches and loader workers from ``run`` or the device's defaults."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.device = resolve_device(run.device)

    def extract(self, root, names, output, weights, config, settings, descriptor_dtype=np.float16, overwrite=False,
                timings=None, method="d2"):
        default_batch, default_workers = default_loading(self.device)
        batch_size = self.run.batch_size if self.run.batch_size is not None else default_batch
        workers = self.run.loader_workers if self.run.loader_workers is not None else default_workers
        clock = StageClock(self.device) if timings else None
        with timed(clock, STARTUP_STAGE):
            extractor = make_extractor(method, weights, config, self.device)
        batches = MemoryBoundedBatches.for_device(self.device, batch_size, self.run.gpu_memory_gib)
        with timed(clock, LOOP_STAGE):
            extracted, failures = extract_features(
                root, names, output, extractor, settings, descriptor_dtype=descriptor_dtype, overwrite=overwrite,
                batch_size=batch_size, workers=workers, progress=self.run.progress, clock=clock, batches=batches)
        if clock is not None:
            write_timings(timings, clock, extracted, self.device, batches.run_peak_bytes())
        return extracted, failures

    def match(self, features, pairs, output, min_similarity=None, ratio=None, overwrite=False, keep_unrecorded=False):
        return match_pairs(features, pairs, output, self.device, min_similarity=min_similarity, ratio=ratio,
                           overwrite=overwrite, progress=self.run.progress, keep_unrecorded=keep_unrecorded)


def backend_for(run: RunConfig) -> Backend:
    """The Ray backend when ``run.ray`` names a cluster, else this process."""
    if run.ray is None:
        return LocalBackend(run)
    from d2sfm.cluster.backend import RayBackend

    return RayBackend(run.ray, workers=run.ray_workers, cpus_per_worker=run.ray_cpus_per_worker,
                      batch=run.ray_batch, gpu_memory_gib=run.gpu_memory_gib, progress=run.progress)
