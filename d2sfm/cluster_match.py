"""Mutual-nearest-neighbour matching on a Ray cluster (``d2sfm.match --ray``): the same matches.h5 as a
single-process run.

Pairs are sorted and cut into blocks, so that a block touches few images and its worker reads each of them from
features.h5 once per block (many readers of one HDF5 file are fine; writers are not). Each worker writes its blocks
into a shard of its own, ``matches.h5.shards/worker-K.h5``, one file session per block with every pair complete or
absent; the driver moves the shards' pairs into matches.h5 at the end and deletes them. A restarted worker redoes
only the pairs its shard lacks; a run killed as a whole leaves shards that the next run collects first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from d2sfm.cluster import (
    balanced_batch,
    collect_shards,
    discard_shards,
    run_on_workers,
    shard_folder,
    shard_path,
    start_ray,
    worker_shape,
)
from d2sfm.errors import D2sfmError
from d2sfm.io import MatchWriter
from d2sfm.pairs import Pair

DEFAULT_BLOCK_PAIRS = 256


class MatchingWorker:
    """A Ray actor's state: its device and the writer of its shard."""

    def __init__(self, features: str, shard: str, min_similarity: float | None, ratio: float | None,
                 threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.features, self.min_similarity, self.ratio = Path(features), min_similarity, ratio
        self.writer = MatchWriter(shard)

    def match(self, block: Sequence[Pair]) -> list[tuple[str, None]]:
        from d2sfm.match import DescriptorCache, match_pair

        todo = [pair for pair in block if not self.writer.has(*pair)]
        cache = DescriptorCache(self.features, self.device, capacity=len({n for pair in todo for n in pair}))
        self.writer.write_many([(name0, name1, *match_pair(cache.get(name0), cache.get(name1), self.min_similarity,
                                                           self.ratio)) for name0, name1 in todo])
        return [(f"{name0} {name1}", None) for name0, name1 in block]


def match_on_cluster(features: Path, pairs: Sequence[Pair], output: Path, address: str,
                     min_similarity: float | None = None, ratio: float | None = None, overwrite: bool = False,
                     workers: int | None = None, cpus_per_worker: int = 1, block_pairs: int = DEFAULT_BLOCK_PAIRS,
                     progress: bool = True) -> int:
    """Match every pair not yet in ``output`` with Ray workers, ``block_pairs`` per task; returns pairs matched."""
    if block_pairs < 1:
        raise D2sfmError("--ray-batch must be at least 1")
    if overwrite:
        discard_shards(output)
    writer = MatchWriter(output, overwrite=overwrite)
    recovered = collect_shards(output, writer.copy_from)
    if recovered:
        print(f"  collected {recovered} pair(s) an interrupted run had matched")
    todo = sorted(pair for pair in pairs if not writer.has(*pair))
    if not todo:
        return recovered
    ray = start_ray(address)
    shape = worker_shape(ray, workers, cpus_per_worker)
    shard_folder(output).mkdir(exist_ok=True)
    actors = [ray.remote(max_restarts=-1, max_task_retries=-1)(MatchingWorker).options(**shape.actor_options())
              .remote(str(features.resolve()), str(shard_path(output, index)), min_similarity, ratio, shape.cpus)
              for index in range(shape.count)]
    size = balanced_batch(len(todo), block_pairs, shape.count, floor=16)  # a block reads its images once
    blocks = [todo[start:start + size] for start in range(0, len(todo), size)]
    run_on_workers(ray, actors, lambda actor, block: actor.match.remote(block), blocks,
                   f"matching ({shape.count} Ray workers)", "pair", shard_folder(output), progress)
    collect_shards(output, writer.copy_from)
    return recovered + len(todo)
