"""Photometric changes that imitate other capture conditions, for test queries and synthesised benchmarks."""

from __future__ import annotations

import numpy as np


def night_like(image_bgr: np.ndarray, rng: np.random.Generator, exposure: float = 0.6, gamma: float = 1.1,
               cast_bgr: tuple[float, float, float] = (0.55, 0.8, 1.0), noise_sigma: float = 2.0) -> np.ndarray:
    """Darker (exposure, gamma), sodium-lamp colour cast (blue damped most), sensor noise; uint8 BGR in and out."""
    value = image_bgr.astype(np.float32) / 255.0
    value = (value * exposure) ** gamma * np.asarray(cast_bgr, np.float32)
    value = value * 255.0 + rng.normal(0.0, noise_sigma, value.shape).astype(np.float32)
    return value.round().clip(0, 255).astype(np.uint8)
