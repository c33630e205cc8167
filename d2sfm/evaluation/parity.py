"""Comparing two D2 extractions of one image, and explaining every keypoint that only one of them has.

D2's detector is a chain of hard decisions on float32 feature maps. Convolution kernels that differ only in
rounding (oneDNN's AVX2 and AVX-512 code paths, cuDNN, the original code on another machine) change feature values
by about 1e-6 relative, so a decision that sits that close to its threshold can go either way: "equal to the
original" cannot mean bitwise equal on every machine. It means (see README):

* most keypoints agree (``agreement``: shares within a distance, counts, scores, descriptors), and
* every keypoint that does not agree is a *near-tie* (``explain``): one of the decisions that made or unmade it,
  recomputed here from the fused feature maps (``pyramid.PyramidLevel``), lies within rounding distance of its
  threshold.

A decision's margin is the first-order smallest change of its input values (max norm) that flips it,
``|g| / ||grad g||_1`` for a decision ``g >= 0``, divided by the local magnitude of the map (the largest |value| of
any channel in the cell's 3x3 window). ``rounding_error`` measures the feature maps' rounding in the same unit,
against a float64 evaluation of the same network, so a near-tie tolerance is a multiple of a measured figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from d2sfm.features.checkpoint import load_model
from d2sfm.features.detect import EDGE_THRESHOLD, NEIGHBOUR_OFFSETS, derivatives, neighbourhoods
from d2sfm.features.extractor import D2Extractor, normalise
from d2sfm.features.pyramid import PyramidLevel
from d2sfm.io.keypoints import image_ij_to_level_cell
from d2sfm.runtime.device import full_float32_cudnn

# Hard detection (the cell joins the banned cells of finer levels), then refinement and descriptor sampling.
HARD_DECISIONS = ("channel_maximum", "spatial_maximum", "positive_determinant", "edge_ratio")
DECISIONS = HARD_DECISIONS + ("offset_i", "offset_j", "inside_map")


# ---------------------------------------------------------------------------------------------------- agreement


@dataclass
class Agreement:
    """How two keypoint sets of one image agree, keypoints in one convention (here network (i, j) or COLMAP)."""

    counts: tuple[int, int]  # (ours, theirs)
    ours_distance: np.ndarray  # (N,) distance from each of ours to the nearest of theirs
    theirs_distance: np.ndarray  # (M,) distance from each of theirs to the nearest of ours
    nearest: np.ndarray  # (N,) index of that nearest of theirs

    def ours_within(self, distance: float) -> float:
        return float(np.mean(self.ours_distance <= distance)) if len(self.ours_distance) else 1.0

    def theirs_within(self, distance: float) -> float:
        return float(np.mean(self.theirs_distance <= distance)) if len(self.theirs_distance) else 1.0

    @property
    def count_difference(self) -> float:
        """|N - M| relative to M."""
        return abs(self.counts[0] - self.counts[1]) / max(self.counts[1], 1)


def agreement(ours_xy: np.ndarray, theirs_xy: np.ndarray) -> Agreement:
    """Nearest neighbours both ways between two (N, 2) keypoint arrays in the same convention and resolution."""
    ours_xy, theirs_xy = np.asarray(ours_xy, np.float64), np.asarray(theirs_xy, np.float64)
    distance, nearest = cKDTree(theirs_xy).query(ours_xy)
    back_distance, _ = cKDTree(ours_xy).query(theirs_xy)
    return Agreement((len(ours_xy), len(theirs_xy)), distance, back_distance, nearest)


# ---------------------------------------------------------------------------------------------------- decisions


@dataclass
class CellDecisions:
    """The detector's decisions at K cells of one level, each with whether it passed and its relative margin."""

    channel: torch.Tensor  # (K,) the winning channel (the one the chain is evaluated in)
    passed: torch.Tensor  # (K, D) bool, columns in the order of DECISIONS
    margin: torch.Tensor  # (K, D) float64 relative flip distance (see module docstring)
    displacement_per_unit: torch.Tensor  # (K,) |d offset| (cells) per unit relative change of the inputs


def _refinement_terms(patch: torch.Tensor, edge_threshold: float):
    """det, the edge test's slack and the sub-pixel steps, by the detector's own formulas (detect.derivatives), as
    differentiable functions of (K, 9) patches."""
    dii, dij, djj, di, dj = derivatives(patch)
    det = dii * djj - dij * dij
    trace = dii + djj
    limit = (edge_threshold + 1) ** 2 / edge_threshold
    step_i = -((djj / det) * di + (-dij / det) * dj)
    step_j = -((-dij / det) * di + (dii / det) * dj)
    return det, limit * det - trace * trace, step_i, step_j


def _flip_distance(g: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """|g| / ||grad_patch g||_1 per row (each row of g depends on its own patch row only)."""
    (gradient,) = torch.autograd.grad(g.sum(), patch, retain_graph=True)
    return g.detach().abs() / gradient.abs().sum(dim=1).clamp_min(1e-300)


def local_magnitude(features: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): the largest |value| of any channel in each cell's 3x3 window, the unit of every margin."""
    return F.max_pool2d(features.abs().amax(dim=1, keepdim=True), 3, stride=1, padding=1)


def float64_backbone(extractor: D2Extractor, weights, image_bgr: np.ndarray) -> torch.Tensor:
    """The extractor's backbone evaluated in float64 on its device: the yardstick of ``rounding_error``. It depends
    on the weights, the image and the preprocessing, not on the convolution algorithm, so extractors that differ
    only in ``conv`` can share one (it costs more than the float32 extraction it measures)."""
    config = extractor.config
    exact_layers = load_model(weights, use_relu=config.use_relu).test_time_layers().double().to(extractor.device)
    with torch.inference_mode(), full_float32_cudnn():
        return exact_layers(_network_input(extractor, image_bgr).double())


def _network_input(extractor: D2Extractor, image_bgr: np.ndarray) -> torch.Tensor:
    """The image as the extractor's backbone takes it: resized, batched, normalised, on its device."""
    pixels = torch.from_numpy(extractor.prepare(image_bgr)[None].copy()).to(extractor.device)
    return normalise(pixels, extractor.config.preprocessing)


def rounding_error(extractor: D2Extractor, weights, image_bgr: np.ndarray, exact: torch.Tensor | None = None) -> float:
    """Largest difference between the extractor's backbone output and a float64 evaluation of the same network on
    the same device (``exact``, from ``float64_backbone``, computed here when not given), relative to the local
    magnitude: the rounding of this run's feature maps."""
    if exact is None:
        exact = float64_backbone(extractor, weights, image_bgr)
    with torch.inference_mode():
        features = extractor.run_backbone(_network_input(extractor, image_bgr)).double()
        difference = (features - exact).abs().amax(dim=1, keepdim=True)
        return float((difference / local_magnitude(exact).clamp_min(1e-30)).max())


def cell_decisions(features: torch.Tensor, b: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                   edge_threshold: float = EDGE_THRESHOLD) -> CellDecisions:
    """Recompute every decision of the detector at cells (b, i, j) of a fused (B, C, H, W) map, in its winning
    channel, with how far each lies from its threshold."""
    _, channels, height, width = features.shape
    values = features[b, :, i, j].double()  # (K, C)
    top = values.topk(min(2, channels), dim=1)
    channel = top.indices[:, 0]
    runner_up = top.values[:, 1] if channels > 1 else torch.full_like(top.values[:, 0], -torch.inf)
    patch, inside = neighbourhoods(features, b, channel, i, j)
    patch = patch.double()
    magnitude = torch.stack([
        features[b, :, (i + di).clamp(0, height - 1), (j + dj).clamp(0, width - 1)].abs().amax(dim=1).double()
        for di, dj in NEIGHBOUR_OFFSETS], 1).where(inside, 0.0).amax(dim=1).clamp_min(1e-30)
    margins = {"channel_maximum": (top.values[:, 0] - runner_up) / 2 / magnitude}
    passed = {"channel_maximum": torch.ones_like(magnitude, dtype=torch.bool)}

    neighbours = torch.where(inside, patch, torch.full_like(patch, -torch.inf))
    neighbours[:, 4] = -torch.inf
    spatial_gap = patch[:, 4] - neighbours.amax(dim=1)
    passed["spatial_maximum"] = spatial_gap >= 0
    margins["spatial_maximum"] = spatial_gap.abs() / 2 / magnitude

    with torch.enable_grad(), torch.inference_mode(False):
        patch = patch.clone().requires_grad_(True)
        det, edge, step_i, step_j = _refinement_terms(patch, edge_threshold)
        cell_i, cell_j = i.double() + step_i, j.double() + step_j
        inside_map = torch.stack([cell_i, height - 1 - cell_i, cell_j, width - 1 - cell_j], 1).amin(dim=1)
        for name, g in (("positive_determinant", det), ("edge_ratio", edge),
                        ("offset_i", 0.5 - step_i.abs()), ("offset_j", 0.5 - step_j.abs()),
                        ("inside_map", inside_map)):
            passed[name] = (g > 0) if name in ("positive_determinant", "offset_i", "offset_j") else (g >= 0)
            margins[name] = _flip_distance(g, patch) / magnitude
        (gradient_i,) = torch.autograd.grad(step_i.sum(), patch, retain_graph=True)
        (gradient_j,) = torch.autograd.grad(step_j.sum(), patch)
    # a relative change e of the inputs moves the offset by up to e * magnitude * ||grad step||_1
    displacement = torch.maximum(gradient_i.abs().sum(1), gradient_j.abs().sum(1)) * magnitude
    return CellDecisions(
        channel=channel,
        passed=torch.stack([passed[name] for name in DECISIONS], 1),
        margin=torch.nan_to_num(torch.stack([margins[name].detach() for name in DECISIONS], 1), nan=0.0),
        displacement_per_unit=torch.nan_to_num(displacement, nan=torch.inf),
    )


# ---------------------------------------------------------------------------------------------------- explaining


@dataclass
class Explanation:
    """Why one keypoint is in one extraction and not the other, judged on this extraction's feature maps."""

    side: str  # "here": this extraction has it, the other does not; "other": the other has it, this one does not
    keypoint: tuple[float, float, float]  # network (i, j, 1/scale)
    level: int
    cell: tuple[int, int]
    decision: str  # the near-tie decision, "level L <decision>" for a ban from a coarser level; "" if none
    margin: float  # its relative margin (inf where nothing explains it)
    explained: bool

    def __str__(self) -> str:
        i, j, s = self.keypoint
        what = f"{self.decision} margin {self.margin:.2e}" if self.decision else "no near-tie decision"
        verdict = "near-tie" if self.explained else "UNEXPLAINED"
        return f"{self.side:5s} ({i:.3f}, {j:.3f}) x{s:g} level {self.level} cell {self.cell}: {what} -> {verdict}"


def _source_cells(levels: Sequence[PyramidLevel]) -> list[list[torch.Tensor]]:
    """sources[l][k]: (h_l, w_l) flat index of the level-k cell whose ban reaches each level-l cell (k < l), by the
    same nearest-neighbour resizing, level by level, that the pyramid applies to its banned cells."""
    sizes = [level.features.shape[2:] for level in levels]
    device = levels[0].features.device
    sources = []
    for index in range(len(levels)):
        row = []
        for coarse in range(index):
            grid = torch.arange(sizes[coarse].numel(), dtype=torch.float64, device=device).view(1, 1, *sizes[coarse])
            for between in range(coarse + 1, index + 1):
                grid = F.interpolate(grid, size=sizes[between])
            row.append(grid[0, 0].round().long())
        sources.append(row)
    return sources


def _hard_detection_tie(decisions: CellDecisions, row: int, tolerance: float) -> tuple[str, float] | None:
    """The near-tie that could flip whether cell ``row`` is hard-detected (and so bans finer cells), if any."""
    hard = [DECISIONS.index(name) for name in HARD_DECISIONS]
    return _outcome_tie(decisions, row, hard, tolerance)


def _outcome_tie(decisions: CellDecisions, row: int, columns: list[int], tolerance: float) -> tuple[str, float] | None:
    """A near-tie that could change the outcome of the chain of ``columns`` at cell ``row``.

    A passing chain flips if any of its decisions does. A failing chain passes if every failing decision flips,
    or takes another path if the winning channel does (the other channel's chain is then a different one)."""
    passed, margin = decisions.passed[row, columns], decisions.margin[row, columns]
    names = [DECISIONS[c] for c in columns]
    channel_margin = float(decisions.margin[row, DECISIONS.index("channel_maximum")])
    if bool(passed.all()):
        k = int(margin.argmin())
        return (names[k], float(margin[k])) if float(margin[k]) <= tolerance else None
    failing = margin[~passed]
    if float(failing.max()) <= tolerance:
        k = int(torch.where(~passed, margin, torch.full_like(margin, -1.0)).argmax())
        return names[k], float(margin[k])
    return ("channel_maximum", channel_margin) if channel_margin <= tolerance else None


def explain(levels: Sequence[PyramidLevel], image_size: tuple[int, int], here_only: np.ndarray,
            other_only: np.ndarray, tolerance: float, batch_index: int = 0,
            geometric_centres: bool = False, edge_threshold: float = EDGE_THRESHOLD) -> list[Explanation]:
    """Explain keypoints (network (i, j, 1/scale) at the input resolution ``image_size`` = (H, W)) that only this
    extraction (``here_only``) or only the other one (``other_only``) has, from this extraction's levels.

    A keypoint is explained when a decision that made it (here) or unmade it (other) has a relative margin at most
    ``tolerance``:

    * one of its own decisions at its cell (present here: any of them could fail elsewhere; absent here: every
      failing one could pass, or the winning channel could change);
    * the hard detection of a coarser cell whose ban reaches it (present here: a coarser cell narrowly not
      detected here; absent here: one narrowly detected here);
    * both extractions detect the cell but refine it to positions further apart than the tolerance for matching:
      the margin is the relative input change that moves the sub-pixel offset that far.
    """
    height, width = image_size
    level_scales = np.array([1.0 / level.scale for level in levels])
    sources = _source_cells(levels)

    def locate(keypoint):
        index = int(np.argmin(np.abs(level_scales - keypoint[2])))
        level = levels[index]
        factor = torch.tensor([level.image_size[0] / height, level.image_size[1] / width], dtype=torch.float64)
        position = image_ij_to_level_cell(torch.tensor(keypoint[:2], dtype=torch.float64) * factor,
                                          geometric_centres)
        cell = tuple(int(v) for v in torch.round(position).long())
        return index, cell, position

    located = {side: [(keypoint, *locate(keypoint)) for keypoint in np.asarray(points, np.float64).reshape(-1, 3)]
               for side, points in (("here", here_only), ("other", other_only))}
    positions = {side: {(index, cell): position for _, index, cell, position in rows}
                 for side, rows in located.items()}
    explanations = []
    for side, rows in located.items():
        counterpart = positions["other" if side == "here" else "here"]
        for keypoint, level_index, (i, j), position in rows:
            features = levels[level_index].features
            b, ii, jj = (torch.tensor([v], device=features.device) for v in (batch_index, i, j))
            decisions = cell_decisions(features, b, ii, jj, edge_threshold)
            if (level_index, (i, j)) in counterpart:
                moved = float((position - counterpart[(level_index, (i, j))]).abs().max())
                found = ("sub-pixel offset", moved / float(decisions.displacement_per_unit[0]))
                found = found if found[1] <= tolerance else None
            else:
                found = _outcome_tie(decisions, 0, list(range(len(DECISIONS))), tolerance)
                if found is None or (side == "other" and bool(decisions.passed[0].all())):
                    found = _ban_tie(levels, sources, level_index, batch_index, i, j, tolerance, edge_threshold)
            decision, margin = found if found is not None else ("", float("inf"))
            explanations.append(Explanation(side, tuple(float(v) for v in keypoint), level_index, (i, j),
                                            decision, margin, found is not None))
    return explanations


def _ban_tie(levels, sources, level_index, batch_index, i, j, tolerance, edge_threshold) -> tuple[str, float] | None:
    """A near-tie in the hard detection of a coarser cell whose ban reaches cell (i, j) of ``level_index``."""
    for coarse_index, source in enumerate(sources[level_index]):
        coarse = levels[coarse_index].features
        ci, cj = divmod(int(source[i, j]), coarse.shape[3])
        b, ii, jj = (torch.tensor([v], device=coarse.device) for v in (batch_index, ci, cj))
        found = _hard_detection_tie(cell_decisions(coarse, b, ii, jj, edge_threshold), 0, tolerance)
        if found is not None:
            return f"level {coarse_index} cell ({ci}, {cj}) {found[0]}", found[1]
    return None


# ------------------------------------------------------------------------------------ against the reference files


@dataclass(frozen=True)
class ParityCriteria:
    """What "equal to the original" means (README): the thresholds tests/evaluation/test_parity.py asserts and
    benchmarks/gpu_acceptance.py reports on a GPU."""

    match_distance: float = 0.01  # px: a keypoint of ours and one of the reference's are the same keypoint
    min_share: float = 0.995  # of each side's keypoints with a counterpart within match_distance
    max_count_difference: float = 0.005
    min_cosine: float = 0.999  # descriptors of matched keypoints
    max_score_error: float = 1e-3  # relative
    # A near-tie is a decision whose relative margin is at most near_tie_factor times the rounding of both sides:
    # ours (rounding_error, against a float64 evaluation on the same device) and the reference's. The reference
    # ran oneDNN's AVX2 kernels, whose rounding_error under ONEDNN_MAX_CPU_ISA=AVX2 on the two reference images is
    # 3.1e-6 and 3.8e-6 (AVX-512: 6e-7 and 7.5e-7; Winograd 1.4e-5 and 2.6e-5).
    reference_rounding: float = 3.9e-6
    near_tie_factor: float = 4.0

    def tolerance(self, our_rounding: float) -> float:
        return self.near_tie_factor * (our_rounding + self.reference_rounding)


@dataclass
class ParityReport:
    """One extraction of a reference image against the original's outputs, with every figure the criteria judge."""

    counts: tuple[int, int]  # (ours, the reference's)
    ours_share: float  # of our keypoints with a reference keypoint within match_distance
    theirs_share: float
    count_difference: float
    scales_equal: bool  # of the matched keypoints
    max_score_error: float
    min_cosine: float
    tolerance: float
    explanations: list[Explanation]

    @property
    def unexplained(self) -> list[Explanation]:
        return [e for e in self.explanations if not e.explained]

    def failures(self, criteria: ParityCriteria, min_share: float | None = None) -> list[str]:
        """The criteria this extraction misses, in words (empty: equal to the original)."""
        min_share = criteria.min_share if min_share is None else min_share
        checks = [
            (self.count_difference <= criteria.max_count_difference,
             f"keypoint counts differ by {self.count_difference:.2%}"),
            (self.ours_share >= min_share, f"{self.ours_share:.2%} of ours within {criteria.match_distance} px"),
            (self.theirs_share >= min_share,
             f"{self.theirs_share:.2%} of the reference's within {criteria.match_distance} px"),
            (self.scales_equal, "matched keypoints at other scales"),
            (self.max_score_error <= criteria.max_score_error, f"score error {self.max_score_error:.2e}"),
            (self.min_cosine >= criteria.min_cosine, f"descriptor cosine {self.min_cosine:.5f}"),
            (not self.unexplained, "keypoints that differ from the original without a near-tie:\n"
             + "\n".join(str(e) for e in self.unexplained)),
        ]
        return [message for ok, message in checks if not ok]

    def as_dict(self) -> dict:
        return {"counts": list(self.counts), "ours_share": self.ours_share, "theirs_share": self.theirs_share,
                "count_difference": self.count_difference, "scales_equal": self.scales_equal,
                "max_score_error": self.max_score_error, "min_cosine": self.min_cosine, "tolerance": self.tolerance,
                "differing": len(self.explanations), "unexplained": len(self.unexplained)}


def compare_with_reference(extractor: D2Extractor, image_bgr: np.ndarray, reference: dict, tolerance: float,
                           criteria: ParityCriteria = ParityCriteria()) -> ParityReport:
    """Extract ``image_bgr`` and judge it against ``reference`` (the original's .npz: keypoints_ijs, scores,
    descriptors), explaining each keypoint that only one side has from our own feature maps."""
    from d2sfm.io.keypoints import colmap_xy_to_network_ij

    levels = []
    features = extractor.extract(image_bgr, on_level=levels.append)
    ours = np.c_[colmap_xy_to_network_ij(features.keypoints), features.scales]  # the reference's convention
    theirs = np.asarray(reference["keypoints_ijs"], np.float64)
    result = agreement(ours[:, :2], theirs[:, :2])
    matched = result.ours_distance <= criteria.match_distance
    nearest = result.nearest[matched]
    reference_scores = np.asarray(reference["scores"])[nearest]
    score_error = np.abs(features.scores[matched] - reference_scores) / np.abs(reference_scores)
    cosine = np.sum(features.descriptors[matched] * np.asarray(reference["descriptors"], np.float32)[nearest], axis=1)
    explanations = explain(levels, image_bgr.shape[:2], ours[~matched],
                           theirs[result.theirs_distance > criteria.match_distance], tolerance)
    return ParityReport(
        counts=result.counts, ours_share=result.ours_within(criteria.match_distance),
        theirs_share=result.theirs_within(criteria.match_distance), count_difference=result.count_difference,
        scales_equal=bool(np.array_equal(features.scales[matched], theirs[nearest, 2])),
        max_score_error=float(score_error.max()) if len(score_error) else 0.0,
        min_cosine=float(cosine.min()) if len(cosine) else 1.0, tolerance=tolerance, explanations=explanations)
