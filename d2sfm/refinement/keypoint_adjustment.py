"""Featuremetric keypoint adjustment (Lindenberger et al., ICCV 2021, section 4.1), batched in PyTorch.

Each keypoint carries a small patch of dense features around it. For every verified match (a, b) the cost is
``rho(|f_a(x_a + d_a) - f_b(x_b + d_b)|^2)``, ``f`` bilinear in its patch and ``rho`` Cauchy-robust; the
displacements ``d`` of one track's keypoints are solved jointly by Levenberg-Marquardt, the best-connected
keypoint of each track held still (the cost is blind to a shift of the whole track) and every displacement
bounded by the patch. Tracks are independent, so all tracks of similar size are padded to one size and solved
as one batch of small dense systems: the same code runs on the CPU and, fast, on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d2sfm.refinement.settings import AdjustmentSettings

# Padded track sizes: a track is solved in the smallest bucket that holds it. Larger tracks are left as they are
# (on real scenes they are chains merged through a few wrong matches, not one 3D point).
TRACK_BUCKETS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Upper bound on the floats of one batch's normal equations, keeping memory flat on huge scenes.
BATCH_FLOATS = 1 << 24


@dataclass
class AdjustmentReport:
    tracks: int
    tracks_adjusted: int
    cost_before: float
    cost_after: float


def sample_patches(patches: torch.Tensor, nodes: torch.Tensor, xy: torch.Tensor,
                   gradient: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bilinear features (M, C) of ``patches[nodes]`` at patch coordinates ``xy`` (M, 2) (x, y; pixel centres at
    integers), and their derivatives (M, C, 2) with respect to x and y."""
    size = patches.shape[-1]
    x, y = xy[:, 0], xy[:, 1]
    x0 = x.floor().clamp(0, size - 2)
    y0 = y.floor().clamp(0, size - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    xi, yi = x0.long(), y0.long()
    p00 = patches[nodes, :, yi, xi].float()
    p01 = patches[nodes, :, yi, xi + 1].float()
    p10 = patches[nodes, :, yi + 1, xi].float()
    p11 = patches[nodes, :, yi + 1, xi + 1].float()
    top = p00 + fx * (p01 - p00)
    bottom = p10 + fx * (p11 - p10)
    values = top + fy * (bottom - top)
    if not gradient:
        return values, None
    d_dx = (1 - fy) * (p01 - p00) + fy * (p11 - p10)
    d_dy = bottom - top
    return values, torch.stack([d_dx, d_dy], dim=-1)


def _robust_cost(squared: torch.Tensor, scale: float) -> torch.Tensor:
    s2 = scale * scale
    return s2 * torch.log1p(squared / s2)


@dataclass
class _Batch:
    """Tracks padded to ``size`` slots: ``members`` (B, size) node ids (-1: padding), the edges as (track, slot,
    slot) and a mask of the slots that move."""

    members: torch.Tensor
    edge_track: torch.Tensor
    edge_a: torch.Tensor
    edge_b: torch.Tensor
    free: torch.Tensor


def _batches(track_ids: np.ndarray, edges: np.ndarray, fixed: np.ndarray, device: torch.device):
    """Group tracks into padded batches (yields _Batch); tracks above the largest bucket, and tracks whose
    keypoints are all fixed, are skipped."""
    sizes = np.bincount(track_ids)
    degree = np.bincount(edges.ravel(), minlength=len(track_ids))
    order = np.lexsort((-degree, ~fixed, track_ids))  # nodes by track: fixed ones first, then the best-connected
    has_fixed = np.bincount(track_ids, weights=fixed, minlength=len(sizes)) > 0
    all_fixed = np.bincount(track_ids, weights=~fixed, minlength=len(sizes)) == 0
    starts = np.concatenate([[0], np.cumsum(sizes)])
    slot = np.empty(len(track_ids), np.int64)
    slot[order] = np.arange(len(track_ids)) - starts[track_ids[order]]
    bucket_of_track = np.searchsorted(TRACK_BUCKETS, sizes)  # len(TRACK_BUCKETS): too large
    edge_track = track_ids[edges[:, 0]]
    edge_order = np.argsort(edge_track, kind="stable")
    edge_starts = np.concatenate([[0], np.cumsum(np.bincount(edge_track, minlength=len(sizes)))])
    for bucket, size in enumerate(TRACK_BUCKETS):
        chosen = np.flatnonzero((bucket_of_track == bucket) & (sizes >= 2) & ~all_fixed)
        per_batch = max(1, BATCH_FLOATS // (4 * size * size))
        for begin in range(0, len(chosen), per_batch):
            tracks = chosen[begin:begin + per_batch]
            local = np.full(len(sizes), -1, np.int64)
            local[tracks] = np.arange(len(tracks))
            members = np.full((len(tracks), size), -1, np.int64)
            nodes = np.concatenate([order[starts[t]:starts[t + 1]] for t in tracks])
            members[local[track_ids[nodes]], slot[nodes]] = nodes
            batch_edges = edges[np.concatenate([edge_order[edge_starts[t]:edge_starts[t + 1]] for t in tracks])]
            free = members >= 0
            free[members >= 0] &= ~fixed[members[members >= 0]]
            free[~has_fixed[tracks], 0] = False  # with nothing fixed, the best-connected keypoint stays
            as_tensor = lambda array: torch.from_numpy(array).to(device)  # noqa: E731
            yield _Batch(as_tensor(members), as_tensor(local[track_ids[batch_edges[:, 0]]]),
                         as_tensor(slot[batch_edges[:, 0]]), as_tensor(slot[batch_edges[:, 1]]), as_tensor(free))


def adjust_keypoints(patches: torch.Tensor, centres: torch.Tensor, track_ids: np.ndarray, edges: np.ndarray,
                     settings: AdjustmentSettings | None = None,
                     fixed: np.ndarray | None = None) -> tuple[torch.Tensor, AdjustmentReport]:
    """Displacements (K, 2) in patch pixels (x, y) that make matched keypoints' features agree.

    ``patches`` (K, C, P, P): each node's features, ``centres`` (K, 2): where its keypoint lies in its patch,
    ``track_ids`` (K,), ``edges`` (E, 2) node pairs, ``fixed`` (K,) the nodes held still (default: the
    best-connected node of each track). Displacements keep every keypoint inside its patch."""
    settings = settings or AdjustmentSettings()
    device = patches.device
    size = patches.shape[-1]
    centres = centres.to(device, torch.float32)
    low, high = 0.0 - centres, (size - 1.0) - centres  # keep x + d within [0, size - 1]
    displacement = torch.zeros_like(centres)
    report = AdjustmentReport(int(track_ids.max()) + 1 if len(track_ids) else 0, 0, 0.0, 0.0)
    if not len(edges):
        return displacement, report
    fixed = np.zeros(len(track_ids), bool) if fixed is None else np.asarray(fixed, bool)
    for batch in _batches(track_ids, edges, fixed, device):
        moved, before, after = _solve_batch(patches, centres, low, high, batch, settings)
        valid = batch.members >= 0
        displacement[batch.members[valid]] = moved[valid]
        report.tracks_adjusted += len(batch.members)
        report.cost_before += before
        report.cost_after += after
    return displacement, report


def _solve_batch(patches, centres, low, high, batch: _Batch, settings: AdjustmentSettings):
    tracks, size = batch.members.shape
    nodes = batch.members.clamp(min=0)
    et, ea, eb = batch.edge_track, batch.edge_a, batch.edge_b
    scale2 = settings.robust_scale ** 2
    free = batch.free
    lower, upper = low[nodes], high[nodes]
    d = torch.zeros(tracks, size, 2, device=patches.device)

    def evaluate(d: torch.Tensor, gradient: bool):
        values, jacobian = sample_patches(patches, nodes.reshape(-1), (centres[nodes] + d).reshape(-1, 2), gradient)
        values = values.reshape(tracks, size, -1)
        residual = values[et, ea] - values[et, eb]
        squared = (residual * residual).sum(-1)
        cost = torch.zeros(tracks, device=d.device).index_add_(0, et, _robust_cost(squared, settings.robust_scale))
        if not gradient:
            return cost, None
        return cost, (residual, squared, jacobian.reshape(tracks, size, -1, 2))

    cost, linearisation = evaluate(d, True)
    initial_cost = float(cost.sum())
    damping = torch.full((tracks,), settings.initial_damping, device=d.device)
    for _ in range(settings.iterations):
        residual, squared, jacobian = linearisation
        weight = (1.0 / (1.0 + squared / scale2))[:, None, None]
        ja, jb = jacobian[et, ea], jacobian[et, eb]  # (E, C, 2); the residual's Jacobian is (ja, -jb)
        hessian = torch.zeros(tracks, size, size, 2, 2, device=d.device)
        hessian.index_put_((et, ea, ea), weight * ja.transpose(1, 2) @ ja, accumulate=True)
        hessian.index_put_((et, eb, eb), weight * jb.transpose(1, 2) @ jb, accumulate=True)
        cross = -weight * ja.transpose(1, 2) @ jb
        hessian.index_put_((et, ea, eb), cross, accumulate=True)
        hessian.index_put_((et, eb, ea), cross.transpose(1, 2), accumulate=True)
        gradient = torch.zeros(tracks, size, 2, device=d.device)
        weighted = weight[:, :, 0] * residual
        gradient.index_put_((et, ea), (ja.transpose(1, 2) @ weighted[:, :, None])[..., 0], accumulate=True)
        gradient.index_put_((et, eb), -(jb.transpose(1, 2) @ weighted[:, :, None])[..., 0], accumulate=True)
        hessian = hessian.permute(0, 1, 3, 2, 4).reshape(tracks, 2 * size, 2 * size)
        moving = free[:, :, None].expand(-1, -1, 2).reshape(tracks, 2 * size).float()
        hessian = hessian * moving[:, :, None] * moving[:, None, :]
        diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
        damped = hessian + torch.diag_embed(damping[:, None] * diagonal + 1e-9 + (1 - moving))
        step = -torch.linalg.solve(damped, (gradient.reshape(tracks, -1) * moving)[..., None])[..., 0]
        candidate = torch.minimum(torch.maximum(d + step.reshape(tracks, size, 2), lower), upper)
        new_cost, _ = evaluate(candidate, False)
        better = new_cost < cost
        d = torch.where(better[:, None, None], candidate, d)
        cost, linearisation = evaluate(d, True)
        damping = torch.where(better, (damping / 10).clamp(min=1e-7), damping * 10)
        if bool((damping > 1e4).all()):
            break
    return d, initial_cost, float(cost.sum())
