"""The paper's describe-and-detect loss (section 3.3, eq. 8-13), as the original ``lib/loss.py`` computes it.

For each ground-truth correspondence c between feature-map cell A of image 1 and position B of image 2 (rounded
to its cell): the positive distance p(c)^2 = ||d_A - d_B||^2 of the L2-normalised descriptors, the hardest negative
n(c)^2 = min over every cell of image 2 farther than ``safe_radius`` cells from B (Chebyshev) of the distance to
d_A, and the same in image 1 around A for d_B (the smaller of the two counts), the margin
m(c) = max(0, M + p(c)^2 - n(c)^2), and the loss sum_c s1(A) s2(B) m(c) / sum_c s1(A) s2(B) with the soft
detection scores. A pair with fewer than ``min_correspondences`` correspondences is skipped; a batch's loss is
the mean over its pairs that were not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from d2sfm.io.keypoints import image_to_feature_map_ij

MARGIN = 1.0
SAFE_RADIUS = 4  # feature cells
FAR_PENALTY = 10.0  # added to the distance of cells inside the safe radius (distances are at most 4)


def grid_positions(height: int, width: int, device=None) -> torch.Tensor:
    """(2, H*W) float (i, j) of every cell, row-major."""
    rows, columns = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                   indexing="ij")
    return torch.stack([rows.reshape(-1), columns.reshape(-1)]).float()


def _hardest_negative(anchors: torch.Tensor, anchor_cells: torch.Tensor, all_descriptors: torch.Tensor,
                      height: int, width: int, safe_radius: float) -> torch.Tensor:
    """For each anchor descriptor (C, K), the smallest squared distance to a cell (of a map with descriptors
    (C, H*W)) outside ``safe_radius`` of its own cell (2, K)."""
    cells = grid_positions(height, width, anchors.device)
    near = (anchor_cells.float()[:, :, None] - cells[:, None, :]).abs().amax(dim=0) <= safe_radius
    distances = 2 - 2 * anchors.T @ all_descriptors
    return (distances + near.float() * FAR_PENALTY).amin(dim=1)


def pair_loss(features1: torch.Tensor, scores1: torch.Tensor, features2: torch.Tensor, scores2: torch.Tensor,
              ids1: torch.Tensor, positions2: torch.Tensor, scaling_steps: int = 3, margin: float = MARGIN,
              safe_radius: float = SAFE_RADIUS) -> torch.Tensor:
    """Loss of one pair: features (C, h, w), scores (h, w), ``ids1`` the row-major indices of the image-1 cells
    that have a correspondence, ``positions2`` (2, K) their image-2 (i, j) positions in pixels."""
    channels, height1, width1 = features1.shape
    _, height2, width2 = features2.shape
    all_descriptors1 = F.normalize(features1.reshape(channels, -1), dim=0)
    all_descriptors2 = F.normalize(features2.reshape(channels, -1), dim=0)
    cells1 = torch.stack([torch.div(ids1, width1, rounding_mode="floor"), ids1 % width1])
    cells2 = torch.round(image_to_feature_map_ij(positions2, scaling_steps)).long()
    descriptors1 = all_descriptors1[:, ids1]
    descriptors2 = F.normalize(features2[:, cells2[0], cells2[1]], dim=0)
    positive = 2 - 2 * (descriptors1 * descriptors2).sum(dim=0)
    negative2 = _hardest_negative(descriptors1, cells2, all_descriptors2, height2, width2, safe_radius)
    negative1 = _hardest_negative(descriptors2, cells1, all_descriptors1, height1, width1, safe_radius)
    weights = scores1.reshape(-1)[ids1] * scores2[cells2[0], cells2[1]]
    margins = F.relu(margin + positive - torch.minimum(negative1, negative2))
    return (weights * margins).sum() / weights.sum()


def cells_inside(positions2: torch.Tensor, height2: int, width2: int, scaling_steps: int) -> torch.Tensor:
    """Mask of image-2 positions whose rounded cell lies on the feature map (crops that are not a multiple of the
    stride can round past the last cell)."""
    cells = torch.round(image_to_feature_map_ij(positions2, scaling_steps))
    return (cells[0] >= 0) & (cells[0] < height2) & (cells[1] >= 0) & (cells[1] < width2)
