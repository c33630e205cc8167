"""Mutual-nearest-neighbour matching on a Ray cluster (``d2sfm.match --ray``): the same matches.h5 as a
single-process run.

Pairs are sorted and cut into blocks, so that a block touches few images and its worker reads each of them from
features.h5 once per block (many readers of one HDF5 file are fine; writers are not). Each worker writes its blocks
into a shard of its own, ``matches.h5.shards/worker-K.h5``, one file session per block with every pair complete or
absent; the driver moves the shards' pairs into matches.h5 at the end and deletes them. A restarted worker redoes
only the pairs its shard lacks; a run killed as a whole leaves shards that the next run collects first. As in a
single-process run, matches.h5 and the shards record the match settings (other ones are refused) and each pair's
features identities (a pair whose images were extracted again since is matched again).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from d2sfm.cluster.ray_backend import (
    DEFAULT_BLOCK_PAIRS,
    collect_left_shards,
    collect_shards,
    discard_shards,
    run_sharded,
)
from d2sfm.io.h5 import feature_identities
from d2sfm.io.matches_h5 import MatchWriter
from d2sfm.matching.matcher import matches_file_settings
from d2sfm.matching.pairs import Pair
from d2sfm.runtime.device import resolve_device


class MatchingWorker:
    """A Ray actor's state: its device and the writer of its shard."""

    def __init__(self, features: str, shard: str, min_similarity: float | None, ratio: float | None,
                 threads: int, device: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.device = resolve_device(device)  # the worker shape's (WorkerShape.device)
        self.features, self.min_similarity, self.ratio = Path(features), min_similarity, ratio
        self.writer = MatchWriter(shard, matches_file_settings(min_similarity, ratio))

    def match(self, block: Sequence[Pair]) -> list[tuple[str, None]]:
        from d2sfm.matching.matcher import DescriptorCache
        from d2sfm.matching.mnn import match_pair

        identities = feature_identities(self.features, {name for pair in block for name in pair})
        todo = self.writer.todo(block, identities)
        cache = DescriptorCache(self.features, self.device, capacity=len({n for pair in todo for n in pair}))
        self.writer.write_many([(name0, name1, *match_pair(cache.get(name0), cache.get(name1), self.min_similarity,
                                                           self.ratio)) for name0, name1 in todo], identities)
        return [(f"{name0} {name1}", None) for name0, name1 in block]


def match_on_cluster(features: Path, pairs: Sequence[Pair], output: Path, address: str,
                     min_similarity: float | None = None, ratio: float | None = None, overwrite: bool = False,
                     workers: int | None = None, cpus_per_worker: int = 1, block_pairs: int = DEFAULT_BLOCK_PAIRS,
                     progress: bool = True, keep_unrecorded: bool = False) -> int:
    """Match every pair not yet in ``output`` (or matched there from features extracted again since) with Ray
    workers, ``block_pairs`` per task; returns pairs matched (``keep_unrecorded``: as ``match_pairs``)."""
    # refuses before deleting
    writer = MatchWriter(output, matches_file_settings(min_similarity, ratio), overwrite=overwrite)
    if overwrite:
        discard_shards(output)
    recovered = collect_left_shards(output, writer.copy_from, "pair(s) an interrupted run had matched")
    todo = sorted(writer.todo(pairs, feature_identities(features, {name for pair in pairs for name in pair}),
                              keep_unrecorded))
    if not todo:
        return recovered
    features_path = str(features.resolve())
    run_sharded(address, workers, cpus_per_worker, output, MatchingWorker,
                lambda shard, threads, device: (features_path, shard, min_similarity, ratio, threads, device),
                todo, block_pairs, lambda actor, block: actor.match.remote(block), "matching", "pair", progress,
                min_batch=16)  # a block reads each of its images once: not too small
    collect_shards(output, writer.copy_from)
    return recovered + len(todo)
