"""The features of one image, as every stage passes them on: a module of its own, without torch, so that the
files' readers and writers (d2sfm.io) and the commands built on them alone (export) start without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Features:
    """D2 features of one image in COLMAP's convention at the original resolution."""

    keypoints: np.ndarray  # (N, 2) float32 x, y
    scales: np.ndarray  # (N,) float32: 1/pyramid scale times the resize factor (1 = full-resolution detection)
    scores: np.ndarray  # (N,) float32
    descriptors: np.ndarray  # (N, 512) float32 (float16 when extracted for a float16 file), L2-normalised
    image_size: tuple[int, int] = field(default=(0, 0))  # width, height of the original image
    global_descriptor: np.ndarray | None = None  # (512,) float32 for image retrieval
