"""Single- and multi-scale D2-Net extraction over an image pyramid (the original ``lib/pyramid.py``).

At each scale the image is resized bilinearly, its feature map is summed with the (upsampled) fused map of the
previous, coarser scale, and cells detected at a coarser scale are banned. Keypoints come back in the network
convention of the input image (rows ``i``, columns ``j``, pixel centres at integers) with the pyramid scale 1/s,
matching the original's ``keypoints`` columns exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from d2sfm.features.detect import EDGE_THRESHOLD, LevelDetections, detect_level
from d2sfm.features.network import backbone_gflop
from d2sfm.features.settings import MULTI_SCALE, SINGLE_SCALE  # noqa: F401  (where callers have long found them)
from d2sfm.io.keypoints import level_cell_to_image_ij


@dataclass
class RawFeatures:
    """D2 features of one network input, in the network convention."""

    keypoints_ijs: torch.Tensor  # (N, 3): row, column, 1/scale
    scores: torch.Tensor  # (N,)
    descriptors: torch.Tensor  # (N, C), L2-normalised
    global_descriptor: torch.Tensor  # (C,), L2-normalised GeM pooling of the fused map, for image retrieval


def gem_pool(features: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """Generalised-mean pooling of (B, C, H, W) maps into L2-normalised (B, C) image descriptors (Radenovic et
    al.); on VGG conv features it is a strong off-the-shelf retrieval descriptor."""
    features = features.float()  # a copy only for bf16/fp16 maps: fp16 cubes overflow above ~40 (review of d801b67)
    pooled = features.clamp(min=1e-6).pow(power).mean(dim=(2, 3)).pow(1.0 / power)
    return F.normalize(pooled, dim=1)


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size ``F.interpolate(scale_factor=scale)`` gives a level of the pyramid (it floors)."""
    return (height, width) if scale == 1 else (math.floor(height * scale), math.floor(width * scale))


def pyramid_gflop(height: int, width: int, scales: Sequence[float] = SINGLE_SCALE) -> float:
    """Backbone arithmetic of one network input over the pyramid (see ``model.backbone_gflop``)."""
    return sum(backbone_gflop(*level_size(height, width, scale)) for scale in scales)


@dataclass
class PyramidLevel:
    """One level of the pyramid as the detector saw it (kept by callers that explain detections: parity.py)."""

    scale: float
    image_size: tuple[int, int]  # (height, width) of the level's resized input
    features: torch.Tensor  # (B, C, h, w) float32 (or bf16/fp16: extractor.GpuTuning), fused with coarser levels
    detections: LevelDetections


def pyramid_levels(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float] = SINGLE_SCALE,
    edge_threshold: float = EDGE_THRESHOLD,
) -> Iterator[PyramidLevel]:
    """Run the backbone and the detector over the pyramid of a batch of same-size preprocessed images, coarsest
    level first (the order of ``scales``), yielding each level before the next one is computed."""
    previous = banned = None
    for scale in scales:
        level_images = images if scale == 1 else F.interpolate(
            images, scale_factor=scale, mode="bilinear", align_corners=True
        )
        image_size = tuple(level_images.shape[2:])
        features = backbone(level_images)  # float32, or the working precision when the extractor keeps it
        del level_images
        fmap_size = features.shape[2:]
        if previous is not None:
            features += F.interpolate(previous, size=fmap_size, mode="bilinear", align_corners=True)
        if banned is not None:
            banned = F.interpolate(banned.float(), size=fmap_size).bool()
        found = detect_level(features, banned, edge_threshold)
        yield PyramidLevel(scale, image_size, features, found)
        banned = found.detected_cells if banned is None else banned | found.detected_cells
        previous = features


def extract_pyramid(
    backbone: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float] = SINGLE_SCALE,
    edge_threshold: float = EDGE_THRESHOLD,
    geometric_centres: bool = False,
    on_level: Callable[[PyramidLevel], None] | None = None,
) -> list[RawFeatures]:
    """Run D2 on a batch of same-size preprocessed images (B, 3, H, W); one RawFeatures per image.

    ``backbone`` maps images to float32 dense features (B, C, H/4, W/4) (see ``model.D2Net.test_time_layers``).
    ``geometric_centres`` places keypoints at their cells' true centres instead of the original's
    (``keypoints.AVG_POOL_SHIFT``).
    ``on_level`` sees every level (fused map, detections), e.g. to explain a keypoint (parity.py).
    """
    batch, _, height, width = images.shape
    per_image: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(batch)]
    global_descriptors = None
    for level_index, level in enumerate(pyramid_levels(backbone, images, scales, edge_threshold)):
        if on_level is not None:
            on_level(level)
        if global_descriptors is None or level.scale == 1:
            global_descriptors = gem_pool(level.features)
        found = level.detections
        position = level_cell_to_image_ij(found.position, geometric_centres)
        position[:, 0] *= height / level.image_size[0]
        position[:, 1] *= width / level.image_size[1]
        level_scale = torch.full_like(position[:, :1], 1.0 / level.scale)
        keypoints = torch.cat([position, level_scale], dim=1)
        scores = found.score / (level_index + 1)
        for image_index in range(batch):
            rows = found.batch_index == image_index
            per_image[image_index].append((keypoints[rows], scores[rows], found.descriptor[rows]))
        del level, found
    return [
        RawFeatures(*(torch.cat([level[k] for level in levels]) for k in range(3)), global_descriptors[index])
        for index, levels in enumerate(per_image)
    ]
