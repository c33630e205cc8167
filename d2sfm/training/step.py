"""One training or validation step: the network's stride-8 features for both images of every pair, soft
detection, ground-truth correspondences of each pair, and the mean of the pair losses."""

from __future__ import annotations

import torch

from d2sfm.features.extractor import normalise
from d2sfm.features.network import D2Net
from d2sfm.io.keypoints import feature_map_to_image_ij
from d2sfm.training.correspondences import depth_correspondences, homography_correspondences
from d2sfm.training.loss import MARGIN, SAFE_RADIUS, cells_inside, grid_positions, pair_loss
from d2sfm.training.settings import MIN_CORRESPONDENCES, SCALING_STEPS
from d2sfm.training.soft_detection import soft_detection_scores


def correspondences(batch: dict, index: int, positions1: torch.Tensor,
                    image2_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth for pair ``index`` of a batch, from its homography or its depth maps and poses."""
    device = positions1.device
    if "homography" in batch:
        return homography_correspondences(positions1, batch["homography"][index].to(device), *image2_size)
    fields = [batch[f"{key}{k}"][index].to(device) for k in (1, 2)
              for key in ("depth", "intrinsics", "pose", "bbox")]
    return depth_correspondences(positions1, *fields)


def batch_loss(model: D2Net, batch: dict, device: torch.device, preprocessing: str = "caffe",
               margin: float = MARGIN, safe_radius: float = SAFE_RADIUS,
               min_correspondences: int = MIN_CORRESPONDENCES) -> tuple[torch.Tensor | None, int]:
    """(mean loss over the usable pairs or None when none is usable, number of usable pairs)."""
    images1, images2 = batch["image1"].to(device), batch["image2"].to(device)
    count = images1.shape[0]
    features = model(normalise(torch.cat([images1, images2]), preprocessing))
    scores = soft_detection_scores(features)
    _, _, height, width = features.shape
    positions1 = feature_map_to_image_ij(grid_positions(height, width, device), SCALING_STEPS)
    losses = []
    for index in range(count):
        ids, positions2 = correspondences(batch, index, positions1, tuple(images2.shape[1:3]))
        keep = cells_inside(positions2, height, width, SCALING_STEPS)
        ids, positions2 = ids[keep], positions2[:, keep]
        if len(ids) < min_correspondences:
            continue
        losses.append(pair_loss(features[index], scores[index], features[count + index], scores[count + index],
                                ids, positions2, SCALING_STEPS, margin, safe_radius))
    if not losses:
        return None, 0
    return torch.stack(losses).mean(), len(losses)
