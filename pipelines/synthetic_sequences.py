"""HPatches-style sequences synthesised from any folder of photos, so that the matching benchmark runs where
HPatches is absent.

Every photo gives one sequence per split, named ``<split>_<photo>``: image 1 is the photo (longer side reduced to
``max_edge``), images 2-6 are changes of growing strength ((k - 1) / 5) with the exact homography ``H_1_k``:

* ``v`` (viewpoint): a random homography (rotation, zoom, perspective, shift), keeping at least half of the
  image in frame;
* ``i`` (illumination): the identity homography (a fixed camera, as in HPatches) and another daylight: gain,
  gamma, white balance, a shading ramp;
* ``n`` (night-like): a mild homography and a night-like rendering (low exposure, gamma, sodium colour cast,
  blur, noise).

The same seed gives the same sequences, whatever the order or number of photos (each sequence draws from a
generator seeded by the seed and its own name). Sequences are written to a scratch folder and renamed when
complete, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import write_text_atomic
from d2sfm.io.images import ImageReadError, list_images, read_image_bgr
from d2sfm.synthetic.homographies import random_homography, visible_fraction, warp_image
from d2sfm.synthetic.photometric import illumination_change, random_night_like

log = logging.getLogger("d2sfm")

SPLITS = ("i", "v", "n")
NIGHT_VIEWPOINT_STRENGTH = 0.3  # night-like images also move a little: queries are never taken from the same spot
MIN_VISIBLE = 0.5


def sequence_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _viewpoint_homography(rng: np.random.Generator, width: int, height: int, strength: float) -> np.ndarray:
    for _ in range(50):
        homography = random_homography(rng, width, height, strength)
        if visible_fraction(homography, width, height) >= MIN_VISIBLE:
            return homography
    return np.eye(3)


def synthesise_image(reference: np.ndarray, split: str, strength: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(changed image, homography from the reference to it) for one split at one strength."""
    height, width = reference.shape[:2]
    if split == "i":
        return illumination_change(reference, rng, strength), np.eye(3)
    if split == "v":
        homography = _viewpoint_homography(rng, width, height, strength)
        return warp_image(reference, homography), homography
    if split == "n":
        homography = _viewpoint_homography(rng, width, height, NIGHT_VIEWPOINT_STRENGTH * strength)
        return random_night_like(warp_image(reference, homography), rng, strength), homography
    raise D2sfmError(f"unknown split {split!r}; use {', '.join(SPLITS)}")


def _reduce(image: np.ndarray, max_edge: int) -> np.ndarray:
    scale = max_edge / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "image"


def write_sequence(folder: Path, reference: np.ndarray, split: str, rng: np.random.Generator) -> None:
    scratch = folder.with_name(folder.name + ".incomplete")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    cv2.imwrite(str(scratch / "1.png"), reference)
    for k in range(2, 7):
        image, homography = synthesise_image(reference, split, (k - 1) / 5, rng)
        cv2.imwrite(str(scratch / f"{k}.png"), image)
        np.savetxt(scratch / f"H_1_{k}", homography, fmt="%.10g")
    scratch.rename(folder)


def synthesise_sequences(images: Path, output: Path, seed: int = 0, max_edge: int = 512,
                         splits: Sequence[str] = SPLITS, progress: bool = True) -> list[str]:
    """Write the sequences of every photo under ``images`` into ``output``; returns the sequence names. Finished
    sequences are kept; a different seed or size for the same folder is refused rather than mixed."""
    if not images.is_dir():
        raise D2sfmError(f"{images}: no such folder; pass a folder of photos to synthesise sequences from")
    photos = list_images(images)
    if not photos:
        raise D2sfmError(f"{images}: no images found; pass a folder with .jpg/.png photos")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise D2sfmError(f"unknown splits {unknown}; use {', '.join(SPLITS)}")
    output.mkdir(parents=True, exist_ok=True)
    settings = {"source": str(images.resolve()), "seed": seed, "max_edge": max_edge}
    settings_path = output / "synthesis.json"
    if settings_path.is_file():
        stored = json.loads(settings_path.read_text())
        if stored != settings:
            raise D2sfmError(f"{output}: holds sequences synthesised with {stored}; pass another output folder "
                             "or delete it")
    else:
        write_text_atomic(settings_path, json.dumps(settings, indent=2))
    names = []
    for photo in tqdm(photos, desc="synthesising sequences", unit="photo", disable=not progress):
        todo = [(split, f"{split}_{_safe_name(str(Path(photo).with_suffix('')))}") for split in splits]
        names.extend(name for _, name in todo)
        todo = [(split, name) for split, name in todo if not (output / name).is_dir()]
        if not todo:
            continue
        try:
            reference = _reduce(read_image_bgr(images / photo), max_edge)
        except ImageReadError as error:
            log.info(f"  unreadable, skipped: {error}")
            names = [n for n in names if n not in {name for _, name in todo}]
            continue
        for split, name in todo:
            write_sequence(output / name, reference, split, sequence_rng(seed, name))
    return names
