"""Mutual nearest-neighbour matching of L2-normalised descriptors, in row chunks so memory stays bounded."""

from __future__ import annotations

import torch


@torch.inference_mode()
def mutual_nearest_neighbours(
    descriptors0: torch.Tensor, descriptors1: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """(N, D), (M, D) -> (K, 2) long indices of pairs that are each other's most similar descriptor.

    Similarities are computed ``chunk_size`` rows at a time (memory O(chunk_size * M)), keeping the best row of
    every column on the way, so 20k x 20k features never need the full N x M matrix.
    """
    device = descriptors0.device
    n, m = len(descriptors0), len(descriptors1)
    if n == 0 or m == 0:
        return torch.empty(0, 2, dtype=torch.long, device=device)
    descriptors1 = descriptors1.to(device=device, dtype=torch.float32)
    best_in_1 = torch.empty(n, dtype=torch.long, device=device)
    column_best = torch.full((m,), float("-inf"), device=device)
    column_argbest = torch.zeros(m, dtype=torch.long, device=device)
    for start in range(0, n, chunk_size):
        similarity = descriptors0[start:start + chunk_size].float() @ descriptors1.T
        best_in_1[start:start + chunk_size] = similarity.argmax(dim=1)
        chunk_best, chunk_arg = similarity.max(dim=0)
        better = chunk_best > column_best
        column_best = torch.where(better, chunk_best, column_best)
        column_argbest = torch.where(better, chunk_arg + start, column_argbest)
    rows = torch.arange(n, device=device)
    mutual = column_argbest[best_in_1] == rows
    return torch.stack([rows[mutual], best_in_1[mutual]], dim=1)
