"""Photometric changes that imitate other capture conditions, for test queries, synthesised benchmarks and
training pairs. All take and return uint8 BGR images and draw any randomness from the given generator."""

from __future__ import annotations

import cv2
import numpy as np


def night_like(image_bgr: np.ndarray, rng: np.random.Generator, exposure: float = 0.6, gamma: float = 1.1,
               cast_bgr: tuple[float, float, float] = (0.55, 0.8, 1.0), noise_sigma: float = 2.0,
               blur_sigma: float = 0.0) -> np.ndarray:
    """Darker (exposure, gamma), sodium-lamp colour cast (blue damped most), optional blur (long exposure, a
    shaky hand), sensor noise."""
    value = image_bgr.astype(np.float32) / 255.0
    value = (value * exposure) ** gamma * np.asarray(cast_bgr, np.float32)
    if blur_sigma > 0:
        value = cv2.GaussianBlur(value, (0, 0), blur_sigma)
    value = value * 255.0 + rng.normal(0.0, noise_sigma, value.shape).astype(np.float32)
    return value.round().clip(0, 255).astype(np.uint8)


def random_night_like(image_bgr: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """:func:`night_like` with its parameters drawn at ``strength`` (0: mild dusk, 1: dark, noisy, blurred)."""
    return night_like(
        image_bgr, rng,
        exposure=float(np.interp(strength, [0, 1], [0.7, 0.25]) * rng.uniform(0.85, 1.15)),
        gamma=float(rng.uniform(1.0, 1.0 + 0.6 * strength)),
        cast_bgr=(float(rng.uniform(0.45, 0.8)), float(rng.uniform(0.75, 0.95)), 1.0),
        noise_sigma=float(1.0 + 4.0 * strength * rng.uniform(0.5, 1.0)),
        blur_sigma=float(rng.uniform(0.0, 1.5 * strength)),
    )


def illumination_change(image_bgr: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Another time of day under daylight: global gain and gamma, per-channel white balance, and a smooth shading
    ramp across the image (light from another side), each drawn up to ``strength``."""
    height, width = image_bgr.shape[:2]
    value = image_bgr.astype(np.float32) / 255.0
    gain = np.exp(rng.uniform(-1, 1) * 0.7 * strength)
    gamma = np.exp(rng.uniform(-1, 1) * 0.5 * strength)
    balance = np.exp(rng.uniform(-1, 1, 3) * 0.15 * strength).astype(np.float32)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-12
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = ((xs / max(width - 1, 1) - 0.5) * direction[0] + (ys / max(height - 1, 1) - 0.5) * direction[1])
    shading = np.exp(ramp * rng.uniform(0, 1.2) * strength)[..., None]
    value = np.clip(value * gain * shading * balance, 0, 1) ** gamma
    return (value * 255.0).round().clip(0, 255).astype(np.uint8)
