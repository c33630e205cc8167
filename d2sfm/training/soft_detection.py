"""Soft detection (paper eq. 4-7), the differentiable detector trained with the loss.

As the original ``SoftDetectionModule``: ReLU; a soft local maximum over the 3x3 neighbourhood with exponentials
normalised by the image's maximum response (outside the map the padding counts exp(0) = 1); the ratio of each
channel to the cell's best channel; the maximum of their product over channels; normalised to sum 1 per image.
It runs on the backbone's features, the same parameters the test-time hard detector reads (``d2sfm.model``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_detection_scores(features: torch.Tensor, local_max_size: int = 3) -> torch.Tensor:
    """(B, C, H, W) raw features -> (B, H, W) scores, each image summing to 1.

    One difference from the original: a cell whose channels are all <= 0 gets ratio 0 where the original divides
    0 by 0 (NaN, which would poison the whole loss); everywhere else the values are the original's.
    """
    batch = features.shape[0]
    responses = F.relu(features)
    per_image_max = responses.reshape(batch, -1).max(dim=1).values.view(batch, 1, 1, 1)
    exponentials = torch.exp(responses / per_image_max)
    pad = local_max_size // 2
    neighbourhood_sum = local_max_size ** 2 * F.avg_pool2d(
        F.pad(exponentials, [pad] * 4, mode="constant", value=1.0), local_max_size, stride=1)
    local_max_score = exponentials / neighbourhood_sum
    channel_max = responses.max(dim=1, keepdim=True).values
    ratio_to_max = torch.where(channel_max > 0, responses / channel_max.clamp_min(torch.finfo(features.dtype).tiny),
                               torch.zeros_like(responses))
    scores = (local_max_score * ratio_to_max).max(dim=1).values
    return scores / scores.reshape(batch, -1).sum(dim=1).view(batch, 1, 1)
