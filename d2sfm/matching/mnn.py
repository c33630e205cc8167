"""Mutual nearest neighbours of two descriptor sets, by chunks of rows so that memory stays bounded whatever the number
of keypoints, with the optional similarity floor and ratio test.
"""

from __future__ import annotations

import numpy as np
import torch

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
