"""Keypoint refinement by affine patch alignment: every keypoint of a track moves to where its anchor's image
patch, warped by the local affinity between the two views, fits best (an affine Lucas-Kanade / KLT step).

Why this and not only a comparison of feature vectors at the keypoints: between real photos the change of scale,
rotation and lighting moves the optimum of features that are not invariant to it away from the true
correspondence (benchmarks/refine_invariance.py). Here the change of view is part of the model: the 2x2 linear
map starts from the verified matches around the keypoint and is refined with the position, and a gain and bias
absorb the change of exposure, so the optimum is the true correspondence up to the patch's texture.

Each track aligns to one anchor (a keypoint held fixed where the caller fixes images, else the best-connected
one): a star, so errors do not add up along chains and a wrong match moves only its own keypoint. A keypoint
whose alignment does not converge to a good fit, or whose fitted position is uncertain (on an edge, or between
two optima), keeps its detection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from tqdm import tqdm

from d2sfm.refinement.patch_sampling import AtlasBuffer, GrayImages, StackGroup, stack_groups
from d2sfm.refinement.settings import AlignmentSettings
from d2sfm.refinement.tracks import Tracks


@dataclass
class Alignment:
    positions: np.ndarray  # (K, 2) aligned where ``aligned``, else the input
    aligned: np.ndarray  # (K,) bool: the fit converged, correlates, is certain and stayed within max_shift
    moving: np.ndarray  # (K,) bool: was to be aligned (neither its track's anchor nor fixed)
    correlation: np.ndarray  # (K,) of the final fit, NaN where not tried
    uncertainty: np.ndarray  # (K,) px, standard deviation of the fitted position along its weakest direction

    @property
    def median_correlation(self) -> float:
        return float(np.nanmedian(self.correlation)) if self.moving.any() else 0.0


def fit_linear_maps(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(M, 2, 2) least-squares linear maps taking the centred point sets ``source`` (M, k, 2) to ``target``;
    identity where the points are too few or degenerate to fix one."""
    source = source - source.mean(axis=1, keepdims=True)
    target = target - target.mean(axis=1, keepdims=True)
    gram = np.einsum("mki,mkj->mij", source, source)
    cross = np.einsum("mki,mkj->mij", source, target)
    maps = np.tile(np.eye(2), (len(source), 1, 1))
    finite = np.isfinite(gram).all((1, 2)) & np.isfinite(cross).all((1, 2))
    good = finite.copy()
    good[finite] = np.linalg.cond(gram[finite]) < 1e4
    solved = np.linalg.solve(gram[good], cross[good])  # source @ X = target, so the map is X^T
    maps[good] = np.transpose(solved, (0, 2, 1))
    return maps


def local_affinities(xy_first: np.ndarray, xy_second: np.ndarray, neighbours: int) -> np.ndarray:
    """(M, 2, 2) linear maps from the first view to the second around each match, fitted to the ``neighbours``
    matches nearest to it in the first view; identity where there are too few matches."""
    if len(xy_first) < 4:
        return np.tile(np.eye(2), (len(xy_first), 1, 1))
    _, index = cKDTree(xy_first).query(xy_first, k=min(neighbours, len(xy_first)))
    return fit_linear_maps(xy_first[index], xy_second[index])


def edge_affinities(verified: dict[tuple[int, int], np.ndarray], keypoints: dict[int, np.ndarray],
                    neighbours: int = 12) -> np.ndarray:
    """(E, 2, 2) local affinities of every verified match, in the order ``build_tracks`` numbers its edges (pair
    by pair, as ``verified`` iterates)."""
    maps = [local_affinities(keypoints[first][inliers[:, 0], :2].astype(np.float64),
                             keypoints[second][inliers[:, 1], :2].astype(np.float64), neighbours)
            for (first, second), inliers in verified.items()]
    return np.concatenate(maps) if maps else np.zeros((0, 2, 2))


def anchors_and_maps(tracks: Tracks, edge_maps: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each node's anchor node and the linear map (K, 2, 2) from the anchor's view to the node's, composed along
    the track's matches outward from the anchor (breadth first, all tracks at once)."""
    count = len(tracks.track_ids)
    degree = np.bincount(tracks.edges.ravel(), minlength=count).astype(np.float64)
    priority = degree + fixed * (degree.max(initial=0) + 1)  # a fixed keypoint anchors its track
    order = np.lexsort((np.arange(count), -priority, tracks.track_ids))
    first = np.ones(count, bool)
    first[1:] = tracks.track_ids[order[1:]] != tracks.track_ids[order[:-1]]
    anchor_of_track = np.empty(tracks.num_tracks, np.int64)
    anchor_of_track[tracks.track_ids[order[first]]] = order[first]
    anchors = anchor_of_track[tracks.track_ids]
    maps = np.full((count, 2, 2), np.nan)
    maps[anchors == np.arange(count)] = np.eye(2)
    inverse = np.linalg.inv(edge_maps)
    for _ in range(count):
        known = ~np.isnan(maps[:, 0, 0])
        start, end = tracks.edges[:, 0], tracks.edges[:, 1]
        forward = known[start] & ~known[end]
        backward = known[end] & ~known[start]
        if not (forward.any() or backward.any()):
            break
        maps[end[forward]] = edge_maps[forward] @ maps[start[forward]]
        maps[start[backward]] = inverse[backward] @ maps[end[backward]]
    return anchors, maps


def _grid(radius: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    offsets = torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)  # (P^2, 2)
    weights = torch.exp(-(offsets ** 2).sum(1) / (2 * (radius / 1.5) ** 2))
    return offsets, weights / weights.sum()


def _normalised(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    mean = (values * weights).sum(-1, keepdim=True)
    centred = values - mean
    return centred / ((centred ** 2 * weights).sum(-1, keepdim=True).sqrt() + 1e-6)


SCALE_STEPS = np.sqrt(2.0) ** np.arange(5)  # blur and sample spacing factors 1 .. 4


def _spacing_factors(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the sample spacing (and blur) factor in the anchor's view and in its own: samples at least one
    pixel apart in both views, blurred in proportion, so a view at a coarser scale is compared with a template
    blurred to the same detail (quantised to powers of sqrt 2, up to a scale change of 4)."""
    scale = np.sqrt(np.abs(np.linalg.det(np.nan_to_num(maps, nan=1.0))))
    def quantise(factor):
        return SCALE_STEPS[np.abs(np.log(factor)[:, None] - np.log(SCALE_STEPS)[None]).argmin(1)]
    anchor_factor = quantise(np.maximum(1.0, 1.0 / np.maximum(scale, 1e-6)))
    own_factor = quantise(np.maximum(1.0, scale))
    return anchor_factor, own_factor


def align_keypoints(tracks: Tracks, xy: np.ndarray, edge_maps: np.ndarray, fixed: np.ndarray,
                    read_gray: Callable[[int], np.ndarray], settings: AlignmentSettings,
                    device: torch.device, progress: bool = False) -> Alignment:
    """Align every track node at ``xy`` (K, 2, COLMAP convention) to its track's anchor; anchors and ``fixed``
    nodes stay (a fixed node anchors its track).

    ``edge_maps`` (E, 2, 2) are the local affinities of ``tracks.edges`` (first node's view to second's);
    ``read_gray(image_id)`` gives an image as float32 grayscale. Tracks are taken in chunks of at most
    ``settings.max_nodes`` nodes; in each, the templates around the anchors are sampled, then the keypoints
    aligned, both over groups of images whose blurred stacks fit ``settings.batches``: memory is one
    chunk's templates, one group's stacks and the cache of decoded images, never all images.
    Tracks of more than ``settings.max_track_size`` keypoints keep theirs (on a synthetic ring of 500 views, one
    chain of 148,000 keypoints held 98% of them and its templates alone took 2 GB)."""
    small = tracks.track_sizes()[tracks.track_ids] <= settings.max_track_size
    within = small[tracks.edges[:, 0]]  # a larger track loses its edges, so no keypoint of it is reached
    anchors, maps = anchors_and_maps(Tracks(tracks.image_ids, tracks.keypoint_ids, tracks.track_ids,
                                            tracks.edges[within]), edge_maps[within], fixed)
    count = len(xy)
    moving = (anchors != np.arange(count)) & ~fixed & ~np.isnan(maps[:, 0, 0]) & small
    result = Alignment(xy.copy(), np.zeros(count, bool), moving, np.full(count, np.nan), np.full(count, np.nan))
    chunks = _chunks(tracks.track_ids, settings.max_nodes)
    _, stack_bytes, image_bytes = settings.batches(device)
    images = GrayImages(read_gray, device, max(image_bytes, stack_bytes // 3))
    storage = AtlasBuffer(stack_bytes, device) if moving.any() else None
    with tqdm(total=int(moving.sum()), desc="aligning keypoints", unit="kp", disable=not progress) as bar:
        for chunk in chunks:
            nodes = chunk[moving[chunk]]
            if len(nodes):
                _align_chunk(nodes, anchors, maps, xy, tracks.image_ids, images, storage, settings, device, result)
                bar.update(len(nodes))
    return result


def _chunks(track_ids: np.ndarray, max_nodes: int) -> list[np.ndarray]:
    """Node index arrays, whole tracks each, of about ``max_nodes`` nodes."""
    order = np.argsort(track_ids, kind="stable")
    sorted_ids = track_ids[order]
    bounds = [0]
    while bounds[-1] < len(order):
        end = min(bounds[-1] + max_nodes, len(order))
        if end < len(order):  # never split a track
            end = int(np.searchsorted(sorted_ids, sorted_ids[end - 1], side="right"))
        bounds.append(end)
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _groups(image_ids: np.ndarray, blurs: np.ndarray, images: GrayImages, stack_bytes: int, reverse: bool,
            pyramid: bool):
    """(rows, the index of each row's stack in the group, the group's keys) over groups of the rows' (image,
    blur) stacks that fit ``stack_bytes``. ``reverse`` walks the images backwards: the pass after a forward one
    starts with the images the cache still holds."""
    codes = np.stack([image_ids.astype(np.int64), np.round(blurs * 1e6).astype(np.int64)], axis=1)
    unique, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.arange(len(unique))[::-1] if reverse else np.arange(len(unique))
    keys = [(int(image_id), code / 1e6) for image_id, code in unique]
    for group in stack_groups([keys[i] for i in order], images, stack_bytes, pyramid=pyramid):
        members = order[group]
        position = np.full(len(unique), -1)
        position[members] = np.arange(len(members))
        rows = np.flatnonzero(position[inverse] >= 0)
        rows = rows[np.argsort(position[inverse[rows]], kind="stable")]  # stack by stack: samples stay in cache
        yield rows, position[inverse[rows]], [keys[i] for i in members]


def _batches(image_ids: np.ndarray, blurs: np.ndarray, images: GrayImages, storage: AtlasBuffer,
             settings: AlignmentSettings, device, reverse: bool, pyramid: bool):
    """(row indices, sampler of those rows' stacks) per batch of at most the device's rows, group by group, each
    group's atlas built in ``storage``. The caller drops each sampler before asking for the next, so one atlas is
    alive at a time."""
    max_rows, stack_bytes, _ = settings.batches(device)
    for rows, which, keys in _groups(image_ids, blurs, images, stack_bytes, reverse, pyramid):
        stacks = StackGroup(keys, images, device, storage, pyramid)
        for begin in range(0, len(rows), max_rows):
            yield (torch.from_numpy(rows[begin:begin + max_rows]).to(device),
                   stacks.sampler(which[begin:begin + max_rows]))
        del stacks


def _level_grids(settings: AlignmentSettings, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per blur level, the sample offsets (S, 2) in pixels (times the node's spacing factor) and their weights:
    with ``pyramid``, a level blurred k times more than the finest samples every k pixels over the same window."""
    finest = min(settings.blur_sigmas)
    grids = []
    for sigma in settings.blur_sigmas:
        step = max(1, int(round(sigma / finest))) if settings.pyramid else 1
        offsets, weights = _grid(max(2, int(round(settings.radius / step))), device)
        grids.append((offsets * step, weights))
    return grids


def _align_chunk(nodes, anchors, maps, xy, image_ids, images: GrayImages, storage: AtlasBuffer, settings, device,
                 result: Alignment) -> None:
    anchor_factor, own_factor = _spacing_factors(maps[nodes])
    grids = _level_grids(settings, device)
    sigmas = settings.blur_sigmas
    # the finest level's stacks stay at full size, whatever the view's scale: the fit that is kept samples as
    # without the pyramid
    coarse = [settings.pyramid and sigma > min(sigmas) for sigma in sigmas]
    templates = [torch.empty((len(nodes), len(offsets)), device=device) for offsets, _ in grids]
    anchor_xy = torch.from_numpy(xy[anchors[nodes]]).float().to(device)
    anchor_spacing = torch.from_numpy(anchor_factor).float().to(device)
    for level, sigma in enumerate(sigmas):
        offsets, weights = grids[level]
        for index, sample in _batches(image_ids[anchors[nodes]], sigma * anchor_factor, images, storage, settings,
                                      device, reverse=level % 2 == 1, pyramid=coarse[level]):
            points = anchor_xy[index][:, None] + anchor_spacing[index, None, None] * offsets[None]
            templates[level][index] = _normalised(sample(points)[0], weights)
            del sample
    start = torch.from_numpy(xy[nodes]).double().to(device)
    centre, linear = start.clone(), torch.from_numpy(maps[nodes]).double().to(device)
    correlation = torch.full((len(nodes),), float("nan"), dtype=torch.float64, device=device)
    uncertainty = torch.full_like(correlation, float("nan"))
    spacing = anchor_spacing.double()
    for level, sigma in enumerate(sigmas):
        # the alignment walks the images the other way from the previous pass: where the keypoints' images are
        # also anchors' images (most of them), the cache still holds them
        offsets, weights = grids[level]
        live = np.arange(len(nodes))
        if level and settings.min_coarse_correlation is not None:  # hopeless fits stop at the coarser level
            live = np.flatnonzero((correlation >= settings.min_coarse_correlation).cpu().numpy())
        live_rows = torch.from_numpy(live).to(device)
        for index, sample in _batches(image_ids[nodes][live], (sigma * own_factor)[live], images, storage, settings,
                                      device, reverse=(level + len(sigmas)) % 2 == 1, pyramid=coarse[level]):
            index = live_rows[index]
            centre[index], linear[index], correlation[index], uncertainty[index] = _gauss_newton(
                sample, templates[level][index], centre[index], linear[index], offsets, spacing[index], weights,
                settings.iterations, settings.converged_px, settings.give_up_after, settings.min_coarse_correlation)
            del sample
    shift = (centre - start).norm(dim=1)
    scale = torch.linalg.det(linear).abs().sqrt()
    good = (shift <= settings.max_shift) & (correlation >= settings.min_correlation)
    good &= torch.isfinite(shift) & (scale > 0.2) & (scale < 5)
    if settings.max_uncertainty is not None:
        good &= uncertainty <= settings.max_uncertainty
    good = good.cpu().numpy()
    result.positions[nodes[good]] = centre.cpu().numpy()[good]
    result.aligned[nodes] = good
    result.correlation[nodes] = correlation.cpu().numpy()
    result.uncertainty[nodes] = uncertainty.cpu().numpy()


def _gauss_newton(sample, template, centre, linear, offsets, spacing, weights, iterations, converged_px=None,
                  give_up_after=None, min_correlation=None):
    """Affine Lucas-Kanade with gain and bias: minimise sum_u w(u) (a I(c + L u) + b - T(u))^2 over c, L, a, b
    for every row at once (Levenberg-Marquardt; a step is kept where it lowers the cost). Samples and Jacobians
    are float32, the parameters and the 8x8 solves float64. A row whose step would move no sample by
    ``converged_px`` or more stops iterating (None: every row takes every iteration), and so does one that
    correlates less than ``min_correlation`` after ``give_up_after`` iterations. Returns the centre, linear
    map, the weighted normalised correlation of the fit and its position uncertainty."""
    count, samples = len(centre), len(offsets)
    u = offsets[None] * spacing.float()[:, None, None]  # (N, S, 2) in the anchor's pixels
    reach = u.abs().amax(dim=(1, 2)).double()  # a change of the linear map moves a sample by up to this times it
    root = weights.sqrt()[None]  # residuals and Jacobian rows scaled by sqrt(w): plain normal equations
    damping = torch.full((count,), 1e-3, device=centre.device, dtype=torch.float64)

    def evaluate(c, lin, rows):
        points = c.float()[:, None] + torch.einsum("nij,nsj->nsi", lin.float(), u[rows])
        return sample(points, rows)  # (3, n, S): image, x and y derivatives

    everything = torch.arange(count, device=centre.device)
    image, dx, dy = evaluate(centre, linear, everything)
    w = weights[None]
    mean_i = (image * w).sum(1, keepdim=True)  # initial gain and bias: least squares on the first sample
    var_i = ((image - mean_i) ** 2 * w).sum(1, keepdim=True)
    gain = (((image - mean_i) * template * w).sum(1, keepdim=True) / (var_i + 1e-9)).double()
    bias = -gain * mean_i.double()
    residual = (gain.float() * image + bias.float() - template) * root
    cost = (residual.double() ** 2).sum(1)

    u_x, u_y = u[..., 0].contiguous(), u[..., 1].contiguous()

    def normal_equations(rows):
        # the Jacobian parameter by parameter, (n, 8, S): each row written whole is 2x faster than (n, S, 8)
        g = gain[rows].float()
        gx, gy = g * dx[rows] * root, g * dy[rows] * root
        jacobian = torch.empty((len(rows), 8, samples), device=centre.device)
        jacobian[:, 0], jacobian[:, 1] = gx, gy
        torch.mul(gx, u_x[rows], out=jacobian[:, 2])
        torch.mul(gx, u_y[rows], out=jacobian[:, 3])
        torch.mul(gy, u_x[rows], out=jacobian[:, 4])
        torch.mul(gy, u_y[rows], out=jacobian[:, 5])
        torch.mul(image[rows], root, out=jacobian[:, 6])
        jacobian[:, 7] = root
        return ((jacobian @ jacobian.transpose(1, 2)).double(),
                (jacobian @ residual[rows, :, None])[..., 0].double())

    active = everything
    for iteration in range(iterations):
        if not len(active):
            break
        if iteration == give_up_after and min_correlation is not None:
            fit = (_normalised(image[active], w) * template[active] * w).sum(1)
            active = active[fit >= min_correlation]
            if not len(active):
                break
        rows = active
        hessian, gradient = normal_equations(rows)
        diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
        system = hessian + torch.diag_embed(damping[rows, None] * diagonal + 1e-12)
        step = -torch.linalg.solve(system, gradient[..., None])[..., 0]
        new_centre = centre[rows] + step[:, :2]
        new_linear = linear[rows] + step[:, 2:6].reshape(-1, 2, 2)
        new_gain, new_bias = gain[rows] + step[:, 6:7], bias[rows] + step[:, 7:8]
        new_image, new_dx, new_dy = evaluate(new_centre, new_linear, rows)
        new_residual = (new_gain.float() * new_image + new_bias.float() - template[rows]) * root
        new_cost = (new_residual.double() ** 2).sum(1)
        better = torch.isfinite(new_cost) & (new_cost < cost[rows])
        kept = rows[better]
        centre[kept], linear[kept] = new_centre[better], new_linear[better]
        gain[kept], bias[kept] = new_gain[better], new_bias[better]
        image[kept], dx[kept], dy[kept] = new_image[better], new_dx[better], new_dy[better]
        residual[kept], cost[kept] = new_residual[better], new_cost[better]
        damping[rows] = torch.where(better, damping[rows] * 0.3, damping[rows] * 10).clamp(1e-6, 1e6)
        if converged_px is not None:
            moves = step[:, :2].abs().amax(1) + step[:, 2:6].abs().amax(1) * reach[rows]
            active = rows[~(moves < converged_px)]  # a NaN step keeps iterating, as before
    correlation = (_normalised(image, w) * template * w).sum(1).double()
    return centre, linear, correlation, _position_uncertainty(normal_equations(everything)[0], cost, samples)


def _position_uncertainty(hessian: torch.Tensor, cost: torch.Tensor, samples: int) -> torch.Tensor:
    """Standard deviation (px) of the fitted centre along its least constrained direction: the centre's block of
    the parameters' covariance, residual variance times the inverse Gauss-Newton Hessian (the map, gain and bias
    marginalised). Large on an edge or a flat patch, where the optimum slides. Every sample counts as an
    independent measurement, so under noise that the blur correlates it is a lower bound (about 3.5 times below
    the scatter for white noise): a score to gate on, its threshold set by measurement."""
    size = hessian.shape[-1]
    ridge = 1e-10 * torch.diagonal(hessian, dim1=1, dim2=2).mean(1).clamp(min=1e-30)  # a null direction: huge
    inverse = torch.linalg.inv(hessian + ridge[:, None, None] * torch.eye(size, dtype=hessian.dtype,
                                                                          device=hessian.device))[:, :2, :2]
    # the residual's variance, at least that of a fit with correlation 0.99995 (the template has unit variance):
    # a noiseless fit along an edge must not look certain
    variance = cost.clamp(min=1e-4) / (samples - size)
    return (torch.linalg.eigvalsh(inverse).amax(1).clamp(min=0) * variance).sqrt()
