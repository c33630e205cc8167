"""OpenCV SIFT and RootSIFT as :class:`~d2sfm.features.Features`: the classical baseline of the matching
benchmarks, stored in the same features.h5 layout (COLMAP convention) as D2 features."""

from __future__ import annotations

import cv2
import numpy as np

from d2sfm.io.features import Features
from d2sfm.io.keypoints import opencv_xy_to_colmap_xy


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
