"""D2-Net hard detection, sub-pixel refinement and descriptor sampling at one pyramid level (paper eq. 1-3).

The rules are those of the original ``HardDetectionModule`` / ``HandcraftedLocalizationModule``, but evaluated
sparsely: the original filters all C channels at every cell with five 3x3 derivative convolutions and a 3x3 max
pooling and only then picks the few detections; here each cell's winning channel (almost always unique) is the
only candidate, and the 3x3-maximum test, derivatives, edge test and Newton step are computed from that channel's
3x3 neighbourhood alone. Everything stays on the feature map's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EDGE_THRESHOLD = 5.0
NEIGHBOUR_OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]


@dataclass
class LevelDetections:
    """Detections of one level, for a batch of feature maps, in the original's order (image, channel, row, col)."""

    batch_index: torch.Tensor  # (K,) long
    cell: torch.Tensor  # (K, 3) long: channel, row, column of the detection cell
    position: torch.Tensor  # (K, 2) float: refined (i, j) on the feature map
    score: torch.Tensor  # (K,) raw feature value at the detection cell
    descriptor: torch.Tensor  # (K, C) L2-normalised
    detected_cells: torch.Tensor  # (B, 1, H, W) bool: every hard detection, before refinement (for banning)


def neighbourhoods(features: torch.Tensor, b, c, i, j) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 9) values of the 3x3 neighbourhood of each (b, c, i, j), zero outside the map (as conv padding),
    and (K, 9) whether each neighbour is inside the map."""
    _, _, height, width = features.shape
    values, insides = [], []
    for di, dj in NEIGHBOUR_OFFSETS:
        ii, jj = i + di, j + dj
        inside = (ii >= 0) & (ii < height) & (jj >= 0) & (jj < width)
        v = features[b, c, ii.clamp(0, height - 1), jj.clamp(0, width - 1)]
        values.append(torch.where(inside, v, torch.zeros_like(v)))
        insides.append(inside)
    return torch.stack(values, dim=1).float(), torch.stack(insides, dim=1)  # derivatives in float32 always


def derivatives(patch: torch.Tensor):
    """Finite differences of the original filters, from (K, 9) neighbourhoods (row-major, centre at 4); also used,
    differentiably, by parity.py to measure how far each decision is from its threshold."""
    up, left, centre, right, down = patch[:, 1], patch[:, 3], patch[:, 4], patch[:, 5], patch[:, 7]
    dii = up - 2 * centre + down
    djj = left - 2 * centre + right
    dij = 0.25 * (patch[:, 0] - patch[:, 2] - patch[:, 6] + patch[:, 8])
    di = 0.5 * down - 0.5 * up
    dj = 0.5 * right - 0.5 * left
    return dii, dij, djj, di, dj


def channel_max_candidates(features: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
    """(K, 4) long (b, c, i, j) of every channel that holds its cell's maximum, in the original's order.

    One candidate per cell, plus the rare exact ties. Ties at a maximum of 0 in a non-negative map (dead cells
    after the ReLU) are left out: their whole 3x3 window would have to be 0 to pass the local-maximum test, and
    then the Hessian determinant is 0, which the edge test rejects.
    """
    batch, channels, height, width = features.shape
    maximum, channel = features.max(dim=1)
    tied = (features == maximum[:, None]).sum(dim=1, dtype=torch.int16) > 1
    if features.min() >= 0:
        tied &= maximum > 0
    keep = torch.ones_like(maximum, dtype=torch.bool) if banned is None else ~banned[:, 0]
    b, i, j = (keep & ~tied).nonzero().unbind(dim=1)
    candidates = [torch.stack([b, channel[b, i, j], i, j], dim=1)]
    if tied.any():
        tb, ti, tj = (keep & tied).nonzero().unbind(dim=1)
        holders = (features[tb, :, ti, tj] == maximum[tb, ti, tj][:, None]).nonzero()
        row, tc = holders.unbind(dim=1)
        candidates.append(torch.stack([tb[row], tc, ti[row], tj[row]], dim=1))
    candidates = torch.cat(candidates)
    key = ((candidates[:, 0] * channels + candidates[:, 1]) * height + candidates[:, 2]) * width + candidates[:, 3]
    return candidates[torch.argsort(key)]


def sample_descriptors(features: torch.Tensor, b: torch.Tensor, position: torch.Tensor):
    """Bilinear descriptors at sub-pixel (i, j); drops points whose 4 neighbours are not all inside the map,
    exactly like the original ``interpolate_dense_features``. Returns (descriptors (K', C), kept mask (K,))."""
    _, _, height, width = features.shape
    i, j = position[:, 0], position[:, 1]
    i0, j0 = torch.floor(i).long(), torch.floor(j).long()
    i1, j1 = torch.ceil(i).long(), torch.ceil(j).long()
    kept = (i0 >= 0) & (j0 >= 0) & (i1 < height) & (j1 < width)
    b, i, j, i0, j0, i1, j1 = (t[kept] for t in (b, i, j, i0, j0, i1, j1))
    fi, fj = (i - i0.float())[:, None], (j - j0.float())[:, None]
    descriptors = (
        (1 - fi) * (1 - fj) * features[b, :, i0, j0]
        + (1 - fi) * fj * features[b, :, i0, j1]
        + fi * (1 - fj) * features[b, :, i1, j0]
        + fi * fj * features[b, :, i1, j1]
    )
    return descriptors, kept


def detect_level(
    features: torch.Tensor, banned: torch.Tensor | None = None, edge_threshold: float = EDGE_THRESHOLD
) -> LevelDetections:
    """Hard detections of a (B, C, H, W) float32 map, refined, with scores and descriptors.

    ``banned`` (B, 1, H, W) bool marks cells already detected at a coarser level; they are excluded here.
    """
    batch, _, height, width = features.shape
    b, c, i, j = channel_max_candidates(features, banned).unbind(dim=1)
    patch, inside = neighbourhoods(features, b, c, i, j)
    # 3x3 maximum in its channel (max pooling ignores what lies outside the map)
    local_max = ((patch <= patch[:, 4:5]) | ~inside).all(dim=1)
    b, c, i, j, patch = b[local_max], c[local_max], i[local_max], j[local_max], patch[local_max]

    dii, dij, djj, di, dj = derivatives(patch)
    det = dii * djj - dij * dij
    trace = dii + djj
    ratio_limit = (edge_threshold + 1) ** 2 / edge_threshold
    not_edge = (trace * trace / det <= ratio_limit) & (det > 0)
    b, c, i, j = b[not_edge], c[not_edge], i[not_edge], j[not_edge]
    dii, dij, djj, di, dj, det = (t[not_edge] for t in (dii, dij, djj, di, dj, det))

    detected_cells = torch.zeros(batch, 1, height, width, dtype=torch.bool, device=features.device)
    detected_cells[b, 0, i, j] = True

    step_i = -((djj / det) * di + (-dij / det) * dj)
    step_j = -((-dij / det) * di + (dii / det) * dj)
    inside_cell = (step_i.abs() < 0.5) & (step_j.abs() < 0.5)
    b, c, i, j = b[inside_cell], c[inside_cell], i[inside_cell], j[inside_cell]
    position = torch.stack([i.float() + step_i[inside_cell], j.float() + step_j[inside_cell]], dim=1)

    raw_descriptors, kept = sample_descriptors(features, b, position)
    b, c, i, j, position = b[kept], c[kept], i[kept], j[kept], position[kept]
    return LevelDetections(
        batch_index=b,
        cell=torch.stack([c, i, j], dim=1),
        position=position,
        score=features[b, c, i, j].float(),
        descriptor=F.normalize(raw_descriptors, dim=1),
        detected_cells=detected_cells,
    )
