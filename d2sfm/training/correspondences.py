"""Ground-truth correspondences between two training images, for the feature-map cells of image 1.

Positions are (i, j) rows and columns with pixel centres at integers (the convention of the original training
code and of OpenCV); feature-map cells map to image positions with :func:`d2sfm.io.keypoints.feature_map_to_image_ij`.
Each function returns the indices of the image-1 positions that have a correspondence and the (2, K) positions in
image 2.
"""

from __future__ import annotations

import torch

from d2sfm.io.keypoints import from_integer_centres, to_integer_centres

DEPTH_TOLERANCE = 0.05  # the original's check between projected and annotated depth (MegaDepth units)


def homography_correspondences(positions1: torch.Tensor, homography: torch.Tensor, height2: int,
                               width2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Through a homography acting on (x, y) = (j, i); kept when they land inside image 2."""
    homography = homography.to(positions1)
    xy1 = torch.stack([positions1[1], positions1[0], torch.ones_like(positions1[0])])
    projected = homography @ xy1
    x2, y2 = projected[0] / projected[2], projected[1] / projected[2]
    inside = (projected[2] > 0) & (x2 >= 0) & (x2 <= width2 - 1) & (y2 >= 0) & (y2 <= height2 - 1)
    ids = torch.nonzero(inside).squeeze(1)
    return ids, torch.stack([y2[ids], x2[ids]])


def interpolate_depth(positions: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear depth at (2, N) positions, kept only where all four neighbours are inside and annotated (> 0);
    returns (indices kept, depths)."""
    height, width = depth.shape
    i, j = positions[0], positions[1]
    top, left = torch.floor(i).long(), torch.floor(j).long()
    bottom, right = torch.ceil(i).long(), torch.ceil(j).long()
    inside = (top >= 0) & (left >= 0) & (bottom < height) & (right < width)
    ids = torch.nonzero(inside).squeeze(1)
    top, left, bottom, right, i, j = top[ids], left[ids], bottom[ids], right[ids], i[ids], j[ids]
    corners = torch.stack([depth[top, left], depth[top, right], depth[bottom, left], depth[bottom, right]])
    annotated = (corners > 0).all(dim=0)
    ids, corners = ids[annotated], corners[:, annotated]
    di, dj = i[annotated] - top[annotated].to(i), j[annotated] - left[annotated].to(j)
    weights = torch.stack([(1 - di) * (1 - dj), (1 - di) * dj, di * (1 - dj), di * dj])
    return ids, (weights * corners).sum(dim=0)


def depth_correspondences(positions1: torch.Tensor, depth1: torch.Tensor, intrinsics1: torch.Tensor,
                          pose1: torch.Tensor, bbox1: torch.Tensor, depth2: torch.Tensor,
                          intrinsics2: torch.Tensor, pose2: torch.Tensor,
                          bbox2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Through depth and poses (MegaDepth): back-project with image 1's depth, transform by pose2 pose1^-1
    (world-to-camera 4 x 4), project into image 2 and keep points whose depth agrees with image 2's map within
    DEPTH_TOLERANCE (occlusions fail it). ``bbox`` is the crop's top-left (i, j) in the full image; the intrinsics
    are COLMAP's (pixel centres at +0.5), as in the original ``warp``."""
    ids, z1 = interpolate_depth(positions1, depth1)
    i1, j1 = positions1[0, ids], positions1[1, ids]
    u1 = from_integer_centres(j1 + bbox1[1])  # crop (i, j) -> COLMAP (u, v) of the full image
    v1 = from_integer_centres(i1 + bbox1[0])
    points1 = torch.stack([(u1 - intrinsics1[0, 2]) * z1 / intrinsics1[0, 0],
                           (v1 - intrinsics1[1, 2]) * z1 / intrinsics1[1, 1], z1, torch.ones_like(z1)])
    points2 = pose2 @ torch.linalg.inv(pose1) @ points1
    points2 = points2[:3] / points2[3:]
    projected = intrinsics2 @ points2
    u2 = to_integer_centres(projected[0] / projected[2]) - bbox2[1]  # and back, in image 2's crop
    v2 = to_integer_centres(projected[1] / projected[2]) - bbox2[0]
    kept, annotated_z2 = interpolate_depth(torch.stack([v2, u2]), depth2)
    consistent = (points2[2, kept] - annotated_z2).abs() < DEPTH_TOLERANCE
    kept = kept[consistent]
    return ids[kept], torch.stack([v2[kept], u2[kept]])
