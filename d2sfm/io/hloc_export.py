"""Writing d2sfm's features and matches in hloc's layout (keypoints with pixel centres at integers, descriptors D x N,
one matches0 array per pair), optionally aligned to a refined model's keypoints, so that hloc's localization and its
tools read them as their own.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import atomic_path
from d2sfm.io.features import Features
from d2sfm.io.h5 import (
    feature_identities,
    keypoint_counts,
    list_entries,
    open_hdf5,
    read_features,
    read_global_descriptors,
)
from d2sfm.io.keypoints import colmap_xy_to_opencv_xy
from d2sfm.io.matches_h5 import pair_identity, pair_keys

INT16_LIMIT = np.iinfo(np.int16).max
HLOC_FEATURE_ATTRS = {"keypoint_convention": "hloc (pixel centres at integers)", "descriptor_layout": "D x N",
                      "exported_by": "d2sfm.export"}


# Keypoint refinement moves few keypoints, by a few pixels (the database's patch alignment at most 8 px, the model's
# 4 px more): most of an image's first N 2D points are exactly its keypoints. A model mapped from other features
# holds other points at those indices, tens of pixels away or more.
MAX_MEDIAN_SHIFT_PX = 2.0


ADDED_POINTS_NOTE = ("2D points that model refinement appended (completed tracks) have no D2 descriptor: their "
                     "descriptors are zeros and their scores 0, so a nearest-neighbour matcher with a ratio test or a "
                     "distance threshold never matches them; their 3D points stay reachable through the original "
                     "keypoints of their tracks")


def _group(handle: h5py.File, name: str) -> h5py.Group:
    if posixpath.dirname(name):
        handle.require_group(posixpath.dirname(name))
    return handle.create_group(name)


class ModelPoints:
    """The 2D points of the images of a COLMAP model, by image name: ``points[name]`` is (P, 2) float64 in COLMAP's
    convention, read from the model when asked (the model holds them already: no second copy of a large model).
    Images without 2D points are left out; an image that ``names`` (the features file's) lacks is an error."""

    def __init__(self, model_dir: Path, features_path: Path, names: Sequence[str]) -> None:
        from d2sfm.io.model_files import read_model  # pycolmap: only for --model

        self.model = read_model(model_dir)
        known = set(names)
        self.image_ids: dict[str, int] = {}
        for image_id, image in self.model.images.items():
            if image.num_points2D() == 0:
                continue
            if image.name not in known:
                raise D2sfmError(f"{model_dir}: image {image.name!r} has no features in {features_path}; give the "
                                 "features.h5 the model was mapped from (SCENE/features.h5, or reconstruct's "
                                 "--features)")
            self.image_ids[image.name] = image_id
        if not self.image_ids:
            raise D2sfmError(f"{model_dir}: the model holds no 2D points; give a mapped model such as SCENE/sparse/0")

    def __contains__(self, name: str) -> bool:
        return name in self.image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, name: str) -> np.ndarray:
        points = self.model.images[self.image_ids[name]].points2D
        return np.array([point.xy for point in points], dtype=np.float64).reshape(-1, 2)


def aligned_features(features: Features, points2D: np.ndarray, name: str, model_dir: Path,
                     features_path: Path) -> Features:
    """``features`` with the keypoints replaced by the model's 2D points of that image (COLMAP's convention, as
    features are): the first N are the N keypoints, refined; the rest, appended by track completion, get zero
    descriptors and score 0.

    Why zeros and not, say, the descriptor of the nearest original keypoint: hloc matches D2 features by nearest
    neighbours of the descriptors' dot products (matchers/nearest_neighbor.py). A copied descriptor ties exactly
    with its original, so a query keypoint goes to either of two points of the image (the copy's position and 3D
    point belong to another track: a wrong 2D-3D match) and a ratio test rejects both (best == second best): the
    original's right match is lost too. An all-zero descriptor has similarity 0 with every descriptor (distance
    2): it fails any distance threshold and any ratio test (2 <= r^2 * 2 is false for r < 1), and D2's descriptors
    (with ReLU, the default) are non-negative and unit-length, so a real keypoint's best similarity in an image is
    above 0 unless it is orthogonal to every descriptor there, and a mutual nearest neighbour does not land on a
    zero either. Those points are left unmatched rather than matched wrongly; their 3D points stay reachable
    through the original keypoints of their tracks."""
    count = len(features.keypoints)
    if len(points2D) < count:
        raise D2sfmError(f"{model_dir}: image {name!r} has {len(points2D)} 2D points but {features_path} has {count} "
                         "keypoints for it: the model was mapped from other features; give the scene's own "
                         "features.h5 (or export without --model)")
    if count:
        shift = float(np.median(np.linalg.norm(points2D[:count] - features.keypoints, axis=1)))
        if shift > MAX_MEDIAN_SHIFT_PX:
            raise D2sfmError(f"{model_dir}: image {name!r}'s 2D points lie a median {shift:.1f} px from its keypoints "
                             f"in {features_path} (refinement moves them {MAX_MEDIAN_SHIFT_PX:g} px at most in the "
                             "median): the model was mapped from other features; give the scene's own features.h5")
    added = len(points2D) - count
    descriptors = np.concatenate([features.descriptors,
                                  np.zeros((added, features.descriptors.shape[1]), features.descriptors.dtype)])
    scores = np.concatenate([features.scores, np.zeros(added, features.scores.dtype)])
    return Features(keypoints=points2D, scales=features.scales, scores=scores, descriptors=descriptors,
                    image_size=features.image_size, global_descriptor=features.global_descriptor)


def export_hloc_features(features_path: Path, output: Path, global_output: Path, progress: bool = True,
                         model_dir: Path | None = None) -> tuple[int, int, int, int]:
    """Write ``output``, and ``global_output`` when the images have global descriptors; returns (images, global
    descriptors written, images given the 2D points of the model at ``model_dir``, 2D points written without a
    descriptor)."""
    names = list_entries(features_path)
    if not names:
        raise D2sfmError(f"{features_path}: no features in it; give the features.h5 of d2sfm.extract")
    model = ModelPoints(model_dir, features_path, names) if model_dir is not None else {}
    with_global = []
    added = 0
    with atomic_path(output) as scratch, h5py.File(scratch, "w") as handle:
        for key, value in HLOC_FEATURE_ATTRS.items():
            handle.attrs[key] = value
        if model_dir is not None:
            handle.attrs["aligned_to_model"] = str(Path(model_dir).resolve())
            handle.attrs["model_points2D_without_descriptor"] = ADDED_POINTS_NOTE
        for name in tqdm(names, desc="features", unit="img", disable=not progress):
            features = read_features(features_path, name)
            dtype = np.float32
            if name in model:  # the model's own precision: keypoint i is its 2D point i exactly
                points2D = model[name]
                added += len(points2D) - len(features.keypoints)
                features = aligned_features(features, points2D, name, model_dir, features_path)
                dtype = np.float64
            group = _group(handle, name)
            group.create_dataset("keypoints", data=colmap_xy_to_opencv_xy(features.keypoints).astype(dtype))
            group.create_dataset("descriptors", data=np.ascontiguousarray(features.descriptors.T))
            group.create_dataset("scores", data=features.scores.astype(np.float16))
            group.create_dataset("image_size", data=np.asarray(features.image_size, np.int64))
            if features.global_descriptor is not None:
                with_global.append(name)
    if with_global:  # 512 floats per image: all of them fit in memory even for 10^5 images
        descriptors = read_global_descriptors(features_path, with_global)
        with atomic_path(global_output) as scratch, h5py.File(scratch, "w") as handle:
            for name, descriptor in zip(with_global, descriptors):
                _group(handle, name).create_dataset("global_descriptor", data=descriptor)
    return len(names), len(with_global), len(model), added


class MatchesCheck:
    """Whether the pairs of a matches file fit a features file: each pair names two of its images, has one
    ``matches0`` entry per keypoint of its first image and indices below its second image's keypoint count, and,
    where the pair records them (d2sfm.match does), was matched from the features the file holds now. Matches that
    do not fit point at other keypoints: hloc would read them as wrong correspondences, silently."""

    def __init__(self, matches_path: Path, features_path: Path) -> None:
        self.matches_path, self.features_path = matches_path, features_path
        self.counts = keypoint_counts(features_path)
        self.by_key_name: dict[str, str] = {}  # pair_key's form of a name ('/' made '-') -> the name
        for name in self.counts:
            self.by_key_name.setdefault(name.replace("/", "-"), name)
        self.identities = feature_identities(features_path, self.counts)
        self.fix = (f"match the pairs again from these features (python -m d2sfm.match {features_path} PAIRS -o "
                    f"{matches_path} --overwrite), or give the features file they were matched from")

    def names(self, key: str) -> tuple[str, str]:
        first, second = key.split("/")
        for part in (first, second):
            if part not in self.by_key_name:
                raise D2sfmError(f"{self.matches_path}: pair {first} {second} names image {part!r}, which has no "
                                 f"features in {self.features_path}; {self.fix}")
        return self.by_key_name[first], self.by_key_name[second]

    def metadata(self, key: str, group: h5py.Group) -> bool:
        """Checks what needs no data; True when the pair records the features it was matched from (then its
        indices are these features' own: the matcher made them from them)."""
        name0, name1 = self.names(key)
        stored = pair_identity(group)
        if stored is not None and stored != (self.identities[name0], self.identities[name1]):
            raise D2sfmError(f"{self.matches_path}: pair {name0} {name1} was matched from other features than "
                             f"{self.features_path} holds (extracted again since, or another file's); {self.fix}")
        count = group["matches0"].shape[0] if group["matches0"].ndim == 1 else -1
        if count != self.counts[name0]:
            raise D2sfmError(f"{self.matches_path}: pair {name0} {name1} has {count} matches0 entries but "
                             f"{self.features_path} has {self.counts[name0]} keypoints for {name0}: the matches were "
                             f"made from other features; {self.fix}")
        return stored is not None

    def indices(self, key: str, matches0: np.ndarray) -> None:
        name0, name1 = self.names(key)
        if len(matches0) and (matches0.max() >= self.counts[name1] or matches0.min() < -1):
            bad = int(matches0.max() if matches0.max() >= self.counts[name1] else matches0.min())
            raise D2sfmError(f"{self.matches_path}: pair {name0} {name1} matches keypoint {bad} of {name1}, which has "
                             f"{self.counts[name1]} keypoints in {self.features_path}: the matches were made from "
                             f"other features; {self.fix}")


def check_matches_fit(matches_path: Path, features_path: Path) -> None:
    """``MatchesCheck`` on every pair before anything is written: only pairs that do not record their features
    (an earlier d2sfm's or another program's) have their indices read."""
    check = MatchesCheck(matches_path, features_path)
    with open_hdf5(matches_path) as source:
        for key in sorted(pair_keys(source)):
            if not check.metadata(key, source[key]):
                check.indices(key, source[key]["matches0"][()])


def export_hloc_matches(matches_path: Path, output: Path, progress: bool = True) -> int:
    """Write ``output`` in hloc's layout (``check_matches_fit`` first: the pairs are not checked here)."""
    with open_hdf5(matches_path) as source:
        keys = sorted(pair_keys(source))
        if not keys:
            raise D2sfmError(f"{matches_path}: no matches in it; give the matches.h5 of d2sfm.match")
        with atomic_path(output) as scratch, h5py.File(scratch, "w") as handle:
            for key in tqdm(keys, desc="matches", unit="pair", disable=not progress):
                matches0 = source[key]["matches0"][()]
                dtype = np.int16 if len(matches0) == 0 or matches0.max() <= INT16_LIMIT else np.int32
                group = _group(handle, key)
                group.create_dataset("matches0", data=matches0.astype(dtype))
                group.create_dataset("matching_scores0", data=source[key]["matching_scores0"][()].astype(np.float16))
    return len(keys)


@dataclass
class HlocExport:
    """What ``export_hloc`` wrote: its files and counts (``aligned``/``added``: images given the model's 2D points,
    and of those points the ones without a descriptor; ``pairs``: None without matches)."""

    features: Path
    images: int
    global_features: Path | None
    aligned: int
    added: int
    matches: Path | None
    pairs: int | None


def export_hloc(features: str | os.PathLike, output: str | os.PathLike, *, matches: str | os.PathLike | None = None,
                model: str | os.PathLike | None = None, progress: bool = True) -> HlocExport:
    """A d2sfm features.h5 (and matches.h5) in hloc's conventions under ``output`` (features.h5, global-feats.h5
    where the file has global descriptors, matches.h5); with ``model``, each image's keypoints are that COLMAP
    model's 2D points, so that hloc's localizers see the model's tracks. Every input is checked before anything is
    written (``python -m d2sfm.export hloc`` runs this)."""
    features, output = Path(features), Path(output)
    matches = Path(matches) if matches is not None else None
    for path in (features, matches):
        if path is not None and not path.is_file():
            raise D2sfmError(f"{path}: no such file; give the features.h5 / matches.h5 of a d2sfm run")
    with open_hdf5(features) as handle:
        if handle.attrs.get("keypoint_convention") != "colmap":
            raise D2sfmError(f"{features}: is already in hloc's conventions (not written by d2sfm.extract)")
    if model is not None:
        from d2sfm.io.model_files import check_model_folder

        check_model_folder(Path(model))
    if matches is not None:
        check_matches_fit(matches, features)  # stale matches would be hloc's wrong correspondences
    output.mkdir(parents=True, exist_ok=True)
    images, with_global, aligned, added = export_hloc_features(
        features, output / "features.h5", output / "global-feats.h5", progress=progress,
        model_dir=Path(model) if model is not None else None)
    pairs = None
    if matches is not None:
        pairs = export_hloc_matches(matches, output / "matches.h5", progress=progress)
    return HlocExport(output / "features.h5", images, output / "global-feats.h5" if with_global else None, aligned,
                      added, output / "matches.h5" if matches is not None else None, pairs)
