"""Mutual nearest-neighbour matching of D2 descriptors, and ``python -m d2sfm.match``.

On a GPU the similarities of a pair are one matrix product when they fit in 1 GiB (16k x 16k features) and row
chunks above, so memory stays bounded at any size; on the CPU they always come in cache-sized row chunks. A match
must be each descriptor's best in both directions; optional filters: a minimum cosine similarity and Lowe's ratio
test on the descriptor distances.
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from d2sfm.cluster.match import DEFAULT_BLOCK_PAIRS
from d2sfm.cluster.ray_backend import add_cluster_arguments
from d2sfm.commands.cli import CommandParser, add_device_argument, number, resolve_device, run_main
from d2sfm.commands.library_logs import add_verbose_argument, set_library_logs
from d2sfm.errors import D2sfmError
from d2sfm.io.h5 import MatchWriter, list_entries, read_features
from d2sfm.matching.pairs import Pair, read_pairs

CPU_CHUNK_ROWS = 4096  # measured fastest on the CPU (docs/benchmarks.md): the chunk stays in the caches
GPU_SIMILARITY_BYTES = 1 << 30  # on a GPU, one product up to 1 GiB of similarities (16k x 16k), chunks above


def similarity_chunk_rows(n: int, m: int, device: torch.device) -> int:
    """Rows of the similarity matrix computed at once: all of them on a GPU when the matrix fits the budget (one
    product, like the dense baseline), else as many as fit; a fixed, cache-sized chunk on the CPU."""
    if device.type == "cuda":
        return max(1, min(n, GPU_SIMILARITY_BYTES // (4 * max(m, 1))))
    return CPU_CHUNK_ROWS


def _column_best(similarity: torch.Tensor, row_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's maximum and the first row reaching it (ties as a dense argmax). On a GPU ``max(dim=0)`` is
    fast; on the CPU its strided index search is slow, so there: values by amax, then the smallest row equal."""
    if similarity.device.type == "cuda":
        return similarity.max(dim=0)
    values = similarity.amax(dim=0)
    no_row = torch.iinfo(torch.int32).max
    rows = torch.where(similarity == values, row_ids[: len(similarity)], no_row).amin(dim=0)
    return values, rows.long()


@torch.inference_mode()
def mutual_nearest_neighbours(
    descriptors0: torch.Tensor, descriptors1: torch.Tensor, chunk_size: int | None = None,
    min_similarity: float | None = None, ratio: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D), (M, D) L2-normalised -> ((K, 2) long index pairs, (K,) cosine similarities).
    ``chunk_size``: rows of the similarity matrix at once (default: ``similarity_chunk_rows``)."""
    device = descriptors0.device
    n, m = len(descriptors0), len(descriptors1)
    if n == 0 or m == 0:
        return torch.empty(0, 2, dtype=torch.long, device=device), torch.empty(0, device=device)
    chunk_size = chunk_size or similarity_chunk_rows(n, m, device)
    descriptors1 = descriptors1.to(device=device, dtype=torch.float32)
    best_in_1 = torch.empty(n, dtype=torch.long, device=device)
    best_similarity = torch.empty(n, device=device)
    second_similarity = torch.full((n,), float("-inf"), device=device)
    column_best, column_argbest = None, None
    buffer = torch.empty(min(chunk_size, n), m, device=device)  # reused: no page faults for every chunk
    row_ids = torch.arange(min(chunk_size, n), device=device, dtype=torch.int32)[:, None]
    for start in range(0, n, chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = descriptors0[rows].float()
        similarity = torch.mm(chunk, descriptors1.T, out=buffer[: len(chunk)])
        if ratio is not None and m > 1:
            top = similarity.topk(2, dim=1)
            best_similarity[rows], best_in_1[rows] = top.values[:, 0], top.indices[:, 0]
            second_similarity[rows] = top.values[:, 1]
        else:
            best_similarity[rows], best_in_1[rows] = similarity.max(dim=1)
        chunk_best, chunk_arg = _column_best(similarity, row_ids)
        if column_best is None:
            column_best, column_argbest = chunk_best, chunk_arg + start
        else:  # strictly better only: an earlier chunk keeps its (smaller) row on a tie
            better = chunk_best > column_best
            column_best = torch.where(better, chunk_best, column_best)
            column_argbest = torch.where(better, chunk_arg + start, column_argbest)
    indices = torch.arange(n, device=device)
    keep = column_argbest[best_in_1] == indices
    if min_similarity is not None:
        keep &= best_similarity >= min_similarity
    if ratio is not None:
        # distances of unit vectors: d = sqrt(2 - 2 cos); keep d_best < ratio * d_second
        best_distance = (2 - 2 * best_similarity).clamp(min=0).sqrt()
        second_distance = (2 - 2 * second_similarity).clamp(min=0).sqrt()
        keep &= best_distance < ratio * second_distance
    return torch.stack([indices[keep], best_in_1[keep]], dim=1), best_similarity[keep]


def match_pair(descriptors0: torch.Tensor, descriptors1: torch.Tensor, min_similarity: float | None = None,
               ratio: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One pair in hloc's layout: for each keypoint of image 0 its match in image 1 or -1, and the similarity."""
    matches, scores = mutual_nearest_neighbours(descriptors0, descriptors1, min_similarity=min_similarity,
                                                ratio=ratio)
    matches0 = np.full(len(descriptors0), -1, dtype=np.int32)
    scores0 = np.zeros(len(descriptors0), dtype=np.float32)
    rows = matches[:, 0].cpu().numpy()
    matches0[rows] = matches[:, 1].cpu().numpy()
    scores0[rows] = scores.cpu().numpy()
    return matches0, scores0


class DescriptorCache:
    """Keeps the descriptors of recently used images on the device (pairs share images)."""

    def __init__(self, features_path: Path, device: torch.device, capacity: int = 64) -> None:
        self.features_path, self.device, self.capacity = features_path, device, capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, name: str) -> torch.Tensor:
        if name in self.entries:
            self.entries.move_to_end(name)
            return self.entries[name]
        descriptors = torch.from_numpy(read_features(self.features_path, name).descriptors).to(self.device)
        self.entries[name] = descriptors
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return descriptors


def match_pairs(
    features_path: str | Path, pairs: Sequence[Pair], matches_path: str | Path, device: torch.device | str = "cpu",
    min_similarity: float | None = None, ratio: float | None = None, overwrite: bool = False,
    progress: bool = True, flush_seconds: float = 5.0,
) -> int:
    """Match every pair not yet in ``matches_path``; returns how many pairs were matched now."""
    device = torch.device(device)
    writer = MatchWriter(matches_path, overwrite=overwrite)
    todo = [pair for pair in pairs if not writer.has(*pair)]
    cache = DescriptorCache(Path(features_path), device)
    pending: list = []
    last_flush = time.monotonic()
    for name0, name1 in tqdm(todo, desc="matching", unit="pair", disable=not progress):
        matches0, scores0 = match_pair(cache.get(name0), cache.get(name1), min_similarity, ratio)
        pending.append((name0, name1, matches0, scores0))
        if time.monotonic() - last_flush > flush_seconds:
            writer.write_many(pending)
            pending, last_flush = [], time.monotonic()
    if pending:
        writer.write_many(pending)
    return len(todo)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.match",
        description="Match D2 features of image pairs by mutual nearest neighbours into an HDF5 file (hloc's "
        "matches layout). Rerunning resumes: pairs already matched are skipped.",
    )
    parser.add_argument("features", type=Path, help="features.h5 written by d2sfm.extract, or an hloc features file "
                        "(recognised from its attributes)")
    parser.add_argument("pairs", type=Path, help="pair list, one 'name0 name1' per line (names as in features.h5)")
    parser.add_argument("--output", "-o", type=Path, default=Path("matches.h5"), help="default: matches.h5")
    add_device_argument(parser)
    parser.add_argument("--min-similarity", type=number(float, at_least=-1, at_most=1), default=None,
                        help="drop matches whose descriptor cosine similarity is below this (e.g. 0.8); default: off")
    parser.add_argument("--ratio", type=number(float, above=0, at_most=1), default=None,
                        help="Lowe's ratio test on descriptor distances (e.g. 0.9); off by default")
    add_cluster_arguments(parser, "pairs", DEFAULT_BLOCK_PAIRS)
    parser.add_argument("--overwrite", action="store_true", help="delete the output first and redo every pair")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_library_logs(args.verbose)
    if not args.features.is_file():
        raise D2sfmError(f"{args.features}: no such features file; run python -m d2sfm.extract first")
    pairs = read_pairs(args.pairs, known_names=list_entries(args.features))
    if args.ray is not None:
        from d2sfm.cluster.match import match_on_cluster

        matched = match_on_cluster(args.features, pairs, args.output, args.ray, args.min_similarity, args.ratio,
                                   overwrite=args.overwrite, workers=args.ray_workers,
                                   cpus_per_worker=args.ray_cpus_per_worker, block_pairs=args.ray_batch,
                                   progress=not args.quiet)
        print(f"wrote {args.output}: {matched} pairs matched, {len(pairs) - matched} already done")
        return 0
    matched = match_pairs(args.features, pairs, args.output, resolve_device(args.device),
                          min_similarity=args.min_similarity, ratio=args.ratio, overwrite=args.overwrite,
                          progress=not args.quiet)
    print(f"wrote {args.output}: {matched} pairs matched, {len(pairs) - matched} already done")
    return 0


if __name__ == "__main__":
    run_main(main)
