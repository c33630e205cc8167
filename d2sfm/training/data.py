"""Training pairs with exact correspondences, as (B, H, W, 3) uint8 BGR crops plus what defines the
correspondences (``d2sfm.training.correspondences``).

* :class:`HomographyPairs`: any folder of photos. Image 2 is image 1's neighbourhood seen through a random
  homography (sampled from the full photo, so few black borders), with a photometric change: another daylight or,
  with probability ``night_probability``, a night-like rendering (exposure, gamma, colour cast, blur, noise).
* :class:`MegaDepthPairs`: MegaDepth in the D2-Net preprocessing format (``scene_info/<scene>.npz``); pairs with
  an overlap in [0.5, 1] and a scale ratio below 1.5, 256 x 256 crops centred on a shared 3D point, depth maps and
  poses for the depth-checked correspondences.

Every sample is a deterministic function of (seed, epoch, index): a resumed run sees the same pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from d2sfm.errors import D2sfmError
from d2sfm.io.images import list_images, read_image_bgr
from d2sfm.synthetic.homographies import random_homography
from d2sfm.synthetic.photometric import illumination_change, random_night_like

CROP = 256


def _sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class HomographyPairs(Dataset):
    """``pairs_per_epoch`` pairs drawn from the photos of ``images`` (names relative to it)."""

    def __init__(self, images: str | os.PathLike, names: list[str] | None = None, pairs_per_epoch: int = 100,
                 crop: int = CROP, strength: float = 0.6, night_probability: float = 0.3, seed: int = 0,
                 max_edge: int = 640, photometric: bool = True) -> None:
        self.root = Path(images)
        self.names = list(names) if names is not None else list_images(self.root)
        if not self.names:
            raise D2sfmError(f"{self.root}: no images to make training pairs from; pass a folder of photos")
        self.pairs_per_epoch, self.crop, self.strength = pairs_per_epoch, crop, strength
        self.night_probability, self.seed, self.max_edge = night_probability, seed, max_edge
        self.photometric = photometric  # False: geometry only (to check correspondences)
        self.epoch = 0
        self._cache: dict[str, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def _photo(self, name: str) -> np.ndarray:
        """The photo reduced to ``max_edge`` and at least ``crop`` on its shorter side (kept in memory)."""
        if name not in self._cache:
            image = read_image_bgr(self.root / name)
            scale = min(self.max_edge / max(image.shape[:2]), 1.0)
            scale = max(scale, (self.crop + 2) / min(image.shape[:2]))
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            self._cache[name] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return self._cache[name]

    def __getitem__(self, index: int) -> dict:
        rng = _sample_rng(self.seed, self.epoch, index)
        photo = self._photo(self.names[rng.integers(len(self.names))])
        height, width = photo.shape[:2]
        top, left = rng.integers(0, height - self.crop + 1), rng.integers(0, width - self.crop + 1)
        to_crop = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]], np.float64)
        homography = random_homography(rng, self.crop, self.crop, self.strength)  # crop 1 -> crop 2
        image1 = photo[top:top + self.crop, left:left + self.crop]
        image2 = cv2.warpPerspective(photo, homography @ to_crop, (self.crop, self.crop), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT)
        night = bool(rng.random() < self.night_probability)
        if self.photometric:
            image2 = random_night_like(image2, rng, rng.uniform(0.3, 1.0)) if night else \
                illumination_change(image2, rng, rng.uniform(0.0, 1.0))
        return {"image1": torch.from_numpy(np.ascontiguousarray(image1)),
                "image2": torch.from_numpy(np.ascontiguousarray(image2)),
                "homography": torch.from_numpy(homography.astype(np.float32)), "night": night}


def _read_depth(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return np.asarray(handle["/depth"], np.float32)


def crop_origin(centre_ij: tuple[float, float], shape: tuple[int, int], crop: int) -> tuple[int, int]:
    """Top-left (i, j) of a crop x crop window centred on a point, moved inside the image (the original's rule)."""
    origin = []
    for centre, size in zip(centre_ij, shape):
        start = max(int(centre) - crop // 2, 0)
        if start + crop >= size:
            start = size - crop
        origin.append(start)
    return origin[0], origin[1]


class MegaDepthPairs(Dataset):
    """Pairs of MegaDepth scenes; ``build(epoch)`` draws ``pairs_per_scene`` pairs per scene as the original's
    ``build_dataset`` does (the validation set uses a fixed draw)."""

    def __init__(self, base_path: str | os.PathLike, scene_info_path: str | os.PathLike,
                 scenes: list[str] | None = None, pairs_per_scene: int = 100, min_overlap: float = 0.5,
                 max_overlap: float = 1.0, max_scale_ratio: float = 1.5, crop: int = CROP, seed: int = 0) -> None:
        self.base_path, self.scene_info_path = Path(base_path), Path(scene_info_path)
        if not self.scene_info_path.is_dir():
            raise D2sfmError(f"{self.scene_info_path}: no such folder; MegaDepth needs scene_info/*.npz "
                             "(datasets/megadepth.md)")
        available = sorted(p.stem for p in self.scene_info_path.glob("*.npz"))
        self.scenes = scenes if scenes is not None else available
        missing = [s for s in self.scenes if s not in available]
        if missing or not self.scenes:
            raise D2sfmError(f"{self.scene_info_path}: no scene_info for {missing or 'any scene'}; "
                             "see datasets/megadepth.md")
        self.pairs_per_scene, self.min_overlap, self.max_overlap = pairs_per_scene, min_overlap, max_overlap
        self.max_scale_ratio, self.crop, self.seed = max_scale_ratio, crop, seed
        self.pairs: list[dict] = []
        self.build(0)

    def set_epoch(self, epoch: int) -> None:
        self.build(epoch)

    def build(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.pairs = []
        for scene in self.scenes:
            info = np.load(self.scene_info_path / f"{scene}.npz", allow_pickle=True)
            overlap, scale = info["overlap_matrix"], info["scale_ratio_matrix"]
            valid = (overlap >= self.min_overlap) & (overlap <= self.max_overlap) & (scale <= self.max_scale_ratio)
            candidates = np.stack(np.nonzero(valid))
            if candidates.shape[1] == 0:
                continue
            to_2d, to_depth = info["points3D_id_to_2D"], info["points3D_id_to_ndepth"]
            for pick in rng.integers(0, candidates.shape[1], self.pairs_per_scene):
                first, second = candidates[:, pick]
                shared = sorted(to_2d[first].keys() & to_2d[second].keys())
                ratios = [max(to_depth[first][p] / to_depth[second][p], to_depth[second][p] / to_depth[first][p])
                          for p in shared]
                shared = [p for p, r in zip(shared, ratios) if r <= self.max_scale_ratio]
                if not shared:
                    continue
                point = shared[rng.integers(len(shared))]
                xy1, xy2 = to_2d[first][point], to_2d[second][point]
                self.pairs.append({"scene": scene, "ids": (int(first), int(second)),
                                   "centres": ((xy1[1], xy1[0]), (xy2[1], xy2[0])),
                                   "image_paths": (info["image_paths"][first], info["image_paths"][second]),
                                   "depth_paths": (info["depth_paths"][first], info["depth_paths"][second]),
                                   "intrinsics": (info["intrinsics"][first], info["intrinsics"][second]),
                                   "poses": (info["poses"][first], info["poses"][second])})
        rng.shuffle(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        sample = {}
        for k in (0, 1):
            image = read_image_bgr(self.base_path / str(pair["image_paths"][k]))
            depth = _read_depth(self.base_path / str(pair["depth_paths"][k]))
            if depth.shape != image.shape[:2]:
                raise D2sfmError(f"{pair['depth_paths'][k]}: depth {depth.shape} does not match its image "
                                 f"{image.shape[:2]}; regenerate the preprocessed data")
            top, left = crop_origin(pair["centres"][k], image.shape[:2], self.crop)
            suffix = str(k + 1)
            sample["image" + suffix] = torch.from_numpy(
                np.ascontiguousarray(image[top:top + self.crop, left:left + self.crop]))
            sample["depth" + suffix] = torch.from_numpy(depth[top:top + self.crop, left:left + self.crop].copy())
            sample["intrinsics" + suffix] = torch.from_numpy(np.asarray(pair["intrinsics"][k], np.float32))
            sample["pose" + suffix] = torch.from_numpy(np.asarray(pair["poses"][k], np.float32).reshape(4, 4))
            sample["bbox" + suffix] = torch.tensor([top, left], dtype=torch.float32)
        return sample
