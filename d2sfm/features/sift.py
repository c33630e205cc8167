"""SIFT as :class:`~d2sfm.io.features.Features`, the classical baseline, stored in the same features.h5 layout
(COLMAP convention) as D2 features: OpenCV's SIFT and RootSIFT for the matching benchmarks, and pycolmap's SIFT as a
second extractor of the pipelines (``SiftExtractor``)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from d2sfm.features.extractor import ExtractionConfig
from d2sfm.io.features import Features
from d2sfm.io.keypoints import opencv_xy_to_colmap_xy, rescale_colmap_xy


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """Arandjelovic & Zisserman's RootSIFT: L1-normalise, square root; the result has unit L2 norm, so the dot
    product of two RootSIFT vectors is the Hellinger kernel of the SIFT histograms."""
    descriptors = np.asarray(descriptors, np.float32)
    return np.sqrt(descriptors / (np.abs(descriptors).sum(axis=1, keepdims=True) + 1e-12))


def sift_features(image_bgr: np.ndarray, max_keypoints: int = 0, root: bool = False) -> Features:
    """SIFT on the grey image at full resolution; descriptors L2-normalised (or RootSIFT), strongest first."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        descriptors = np.zeros((0, 128), np.float32)
        keypoints = ()
    responses = np.array([k.response for k in keypoints], np.float32)
    order = np.argsort(-responses, kind="stable")
    if max_keypoints:
        order = order[:max_keypoints]
    xy = np.array([k.pt for k in keypoints], np.float64).reshape(-1, 2)[order]
    sizes = np.array([k.size for k in keypoints], np.float32)[order]
    descriptors = descriptors[order].astype(np.float32)
    if root:
        descriptors = root_sift(descriptors)
    else:
        descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-12
    height, width = image_bgr.shape[:2]
    return Features(keypoints=opencv_xy_to_colmap_xy(xy).astype(np.float32), scales=sizes, scores=responses[order],
                    descriptors=descriptors, image_size=(width, height))


class SiftExtractor:
    """pycolmap's SIFT (COLMAP's own, on the CPU) behind the interface of ``D2Extractor``, so that the extraction
    loop, features.h5, matching and the pipelines run it unchanged: ``python -m d2sfm.reconstruct --features-method
    sift``. Each image is resized by the same rules as for the network (``config.max_edge``, ``max_sum_edges``),
    keypoints are returned at the original resolution, descriptors L2-normalised (RootSIFT, COLMAP's default),
    at most ``config.max_keypoints`` of them, the largest first."""

    def __init__(self, config: ExtractionConfig) -> None:
        import pycolmap
        import torch

        self.config, self.device, self.clock = config, torch.device("cpu"), None
        options = pycolmap.FeatureExtractionOptions()
        if config.max_keypoints:
            options.sift.max_num_features = config.max_keypoints
        self._sift = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)

    def extract_batch(self, resized: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]],
                      descriptor_dtype=np.float32, **_) -> list[Features]:
        return [self._extract(image, size, np.dtype(descriptor_dtype)) for image, size in zip(resized, original_sizes)]

    def _extract(self, image_bgr: np.ndarray, original_size: tuple[int, int], dtype: np.dtype) -> Features:
        grey = np.ascontiguousarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY))
        found, stored = self._sift.extract_from_uint8_array(grey)  # COLMAP's convention, uint8 descriptors
        keypoints = np.array([(point.x, point.y, point.compute_scale()) for point in found], np.float64).reshape(-1, 3)
        descriptors = np.asarray(stored.data, np.float32).reshape(-1, 128)
        descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-12
        height, width = grey.shape
        factor_x, factor_y = original_size[1] / width, original_size[0] / height
        return Features(keypoints=rescale_colmap_xy(keypoints[:, :2], factor_x, factor_y).astype(np.float32),
                        scales=(keypoints[:, 2] * (factor_x + factor_y) / 2).astype(np.float32),
                        scores=np.zeros(len(keypoints), np.float32), descriptors=descriptors.astype(dtype),
                        image_size=(int(original_size[1]), int(original_size[0])))
