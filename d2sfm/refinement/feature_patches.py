"""Dense features for keypoint refinement, kept as small patches around the keypoints.

They come from the first VGG16 blocks of the D2 network the user already runs (no second network, no extra
download): ``conv1_2`` at the network input's resolution (64 channels) or ``conv2_2`` at half of it (128
channels, a wider view, as S2DNet, the features Pixel-Perfect SfM uses, are built from VGG16's conv2_2). Each map
is L2-normalised per pixel, so feature distances lie in [0, 2] whatever the image's contrast. Only a ``size`` x
``size`` patch per tracked keypoint is kept (16-bit), so memory grows with the keypoints, not with the images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from d2sfm.features.checkpoint import load_model
from d2sfm.features.extractor import normalise, resize_for_network
from d2sfm.io.keypoints import colmap_xy_to_network_ij, image_to_feature_map_ij
from d2sfm.refinement.settings import PatchSettings
from d2sfm.runtime.device import full_float32_cudnn

# VGG16 layer: (layers up to and including its ReLU, stride-2 poolings before it)
DENSE_LAYERS = {"conv1_2": (4, 0), "conv2_2": (9, 1)}


@dataclass
class ImagePatches:
    """Patches (N, C, size, size) float16, the keypoints' positions inside them (N, 2) (x, y), and the factors
    (x, y) that turn a displacement in feature pixels into original-image pixels."""

    patches: torch.Tensor
    centres: torch.Tensor
    pixel_factors: np.ndarray


class DenseFeatureNet:
    """The VGG16 prefix of the D2 weights up to ``settings.layer``, on ``device``."""

    def __init__(self, weights: str | os.PathLike, settings: PatchSettings, device: torch.device) -> None:
        if settings.layer not in DENSE_LAYERS:
            raise ValueError(f"layer must be one of {', '.join(DENSE_LAYERS)}, got {settings.layer!r}")
        if settings.size < 4 or settings.size % 2:
            raise ValueError(f"patch size must be even and at least 4, got {settings.size}")
        length, self.scaling_steps = DENSE_LAYERS[settings.layer]
        model = load_model(weights)
        self.layers = torch.nn.Sequential(*list(model.layers)[:length]).eval().to(device)
        self.channels = [m for m in self.layers if isinstance(m, torch.nn.Conv2d)][-1].out_channels
        for parameter in self.layers.parameters():
            parameter.requires_grad = False
        self.settings, self.device = settings, device

    @torch.inference_mode()
    def dense_map(self, image_bgr: np.ndarray) -> tuple[torch.Tensor, tuple[float, float]]:
        """(C, h, w) unit-norm features of the image as the network sees it, and the (y, x) resize factors
        original / network input."""
        resized = resize_for_network(image_bgr, self.settings.max_edge, self.settings.max_sum_edges)
        pixels = torch.from_numpy(np.ascontiguousarray(resized))[None].to(self.device)
        with full_float32_cudnn():  # as the extractor: the same features
            features = self.layers(normalise(pixels, self.settings.preprocessing))[0]  # on a GPU as on the CPU
        factors = (image_bgr.shape[0] / resized.shape[0], image_bgr.shape[1] / resized.shape[1])
        return F.normalize(features, dim=0), factors

    @torch.inference_mode()
    def patches(self, image_bgr: np.ndarray, keypoints_xy: np.ndarray) -> ImagePatches:
        """Patches around COLMAP-convention keypoints (original resolution) of one image."""
        dense, (factor_i, factor_j) = self.dense_map(image_bgr)
        channels, height, width = dense.shape
        network_ij = colmap_xy_to_network_ij(keypoints_xy, factor_i, factor_j)
        cell_ij = torch.from_numpy(image_to_feature_map_ij(network_ij, self.scaling_steps)).to(self.device)
        size = self.settings.size
        origin = cell_ij.floor().long() - (size // 2 - 1)  # the keypoint lies in the patch's central cell
        steps = torch.arange(size, device=self.device)
        rows = (origin[:, 0, None] + steps).clamp(0, height - 1)
        columns = (origin[:, 1, None] + steps).clamp(0, width - 1)
        patches = dense[:, rows[:, :, None], columns[:, None, :]].permute(1, 0, 2, 3).to(torch.float16)
        centres = (cell_ij - origin).flip(1).float()  # (x, y) inside the patch
        stride = 2 ** self.scaling_steps
        return ImagePatches(patches.contiguous(), centres, np.array([stride * factor_j, stride * factor_i]))
