"""features.h5: one HDF5 group per image (its path relative to the image folder), as hloc lays it out.

Each group holds ``keypoints`` (N, 2) float32 x, y in COLMAP's convention at the original resolution, ``scales``
(N,), ``scores`` (N,), ``descriptors`` (N, 512) float16 (float32 on request) and ``image_size`` (width, height).
Differences from hloc: keypoints are stored in COLMAP's convention (hloc stores pixel centres at 0 and adds 0.5 on
import) and descriptors are N x D (hloc: D x N). The file records both facts and the extraction settings as
attributes. A file without them is read as hloc's (``is_hloc_file``): the readers below convert its keypoints and
descriptors on the fly, so every command takes an hloc features file as it is (``d2sfm.export hloc`` goes the
other way).

Each image is written under a temporary name and moved to its final name only when complete, and the file is
closed after each image, so an interrupted run leaves only complete entries (plus scratch that the next run
removes), and a resumed run skips every finished image. Each image group carries ``content_digest``, a digest of
its keypoints and descriptors: matches.h5 records the digests of the two images each pair was matched from, so
that a resumed match knows which pairs were matched from features re-extracted since (``d2sfm.io.matches_h5``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.features import Features
from d2sfm.io.keypoints import opencv_xy_to_colmap_xy

log = logging.getLogger("d2sfm")

SCRATCH_GROUP = "_d2sfm_incomplete"
DIGEST_ATTR = "content_digest"  # an image group's identity (see content_digest)
# hloc reads no file attribute, so this cannot stop its readers; it tells a person who opens the file what it is
HLOC_NOTE = ("not hloc's conventions although laid out like hloc's: keypoints are COLMAP's (hloc's readers would read "
             "them 0.5 px off) and descriptors are N x D (hloc: D x N); convert with python -m d2sfm.export hloc "
             "FEATURES [MATCHES] -o DIR [--model SCENE/sparse/0]")
FORMAT_ATTRS = {"d2sfm_format": "features-1", "keypoint_convention": "colmap", "descriptor_layout": "N x D",
                "hloc_note": HLOC_NOTE}


def is_hloc_file(handle: h5py.File) -> bool:
    """True for a features file in hloc's conventions: one d2sfm did not write (no ``keypoint_convention``
    attribute; hloc writes no attributes) or one ``d2sfm.export hloc`` wrote."""
    return handle.attrs.get("keypoint_convention", "hloc") != FORMAT_ATTRS["keypoint_convention"]


HLOC_ADVICE = "an hloc features file needs keypoints and descriptors (run hloc's extract_features or d2sfm.extract)"


def _image_group(handle: h5py.File, path: str | os.PathLike, name: str) -> h5py.Group:
    """The group of image ``name``, or a one-line error when the file has none for it."""
    group = handle.get(name)
    if not isinstance(group, h5py.Group) or "keypoints" not in group:
        raise D2sfmError(f"{path}: has no features for {name!r}; run d2sfm.extract on that image first")
    return group


def _read_dataset(path: str | os.PathLike, name: str, group: h5py.Group, key: str, ndim: int) -> np.ndarray:
    """``group[key]`` as a numeric array of ``ndim`` dimensions, every value finite; anything else (missing, a
    group, text, NaN or inf) is a one-line error naming the file, the image and the dataset."""
    item = group.get(key)
    if not isinstance(item, h5py.Dataset):
        raise D2sfmError(f"{path}: image {name!r} has no {key!r} dataset; {HLOC_ADVICE}")
    try:
        values = np.asarray(item[()])
    except (OSError, TypeError, ValueError) as error:
        raise D2sfmError(f"{path}: image {name!r} has an unreadable {key!r} dataset ({str(error).splitlines()[0]}); "
                         f"the file is damaged: {HLOC_ADVICE}") from None
    if values.dtype.kind not in "iuf" or values.ndim != ndim:
        raise D2sfmError(f"{path}: image {name!r} has a {key!r} dataset of {values.dtype} with shape {values.shape}, "
                         f"not a {ndim}-D array of numbers; {HLOC_ADVICE}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise D2sfmError(f"{path}: image {name!r} has {bad} NaN or infinite value(s) in {key!r}; the file is "
                         f"damaged or was written by a broken extractor: extract that image's features again")
    return values


def _keypoints(handle: h5py.File, group: h5py.Group, path: str | os.PathLike = "features file") -> np.ndarray:
    """(N, 2) float32 keypoints in COLMAP's convention, whatever the file's; checked: a 2-D array of N x 2 finite
    numbers."""
    name = group.name.lstrip("/")
    keypoints = _read_dataset(path, name, group, "keypoints", 2)
    if keypoints.shape[1] != 2:
        raise D2sfmError(f"{path}: image {name!r} has keypoints of shape {keypoints.shape}, not N x 2 (x, y); "
                         f"{HLOC_ADVICE}")
    return opencv_xy_to_colmap_xy(keypoints).astype(np.float32) if is_hloc_file(handle) else keypoints


def _image_size(path: str | os.PathLike, name: str, group: h5py.Group) -> tuple[int, int]:
    """(width, height) of the image, checked: two positive whole numbers."""
    size = _read_dataset(path, name, group, "image_size", 1)
    if size.shape != (2,) or not (size > 0).all() or not (size == np.round(size)).all():
        raise D2sfmError(f"{path}: image {name!r} has image_size {size.tolist()}, not a positive width and height; "
                         f"{HLOC_ADVICE}")
    return int(size[0]), int(size[1])


# HDF5 locks a file while it is open (a writer excludes readers and a reader excludes writers), and fails at once
# when another process holds it. A person who opens features.h5 to watch a long extraction, or a second command
# reading it, must not stop the run: the open is retried for this long before the error names the holder's fix.
LOCK_WAIT_SECONDS = 120.0


def open_hdf5(path: str | os.PathLike, mode: str = "r", lock_wait: float | None = None) -> h5py.File:
    """h5py.File, with a file that is damaged or not HDF5 as a one-line error naming it; a file that another
    process holds open is waited for (``lock_wait`` seconds, LOCK_WAIT_SECONDS by default)."""
    wait = LOCK_WAIT_SECONDS if lock_wait is None else lock_wait
    started = time.monotonic()
    pause, said = 0.01, False
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as error:
            locked, waited = error.errno in (errno.EAGAIN, errno.EWOULDBLOCK), time.monotonic() - started
            if locked and waited < wait:
                if not said and waited > 1.0:  # more than a writer's or reader's moment
                    log.warning(f"{path}: another process holds it open; waiting up to {wait:.0f} s for it")
                    said = True
                time.sleep(pause)  # the holder writes one image or reads a few entries: usually milliseconds
                pause = min(pause * 2, 0.5)
                continue
            if locked:
                advice = ("another process holds it open (HDF5 file lock): close that program or wait for the "
                          "command using it to end, then rerun")
            elif error.errno:
                advice = "check the folder and its permissions"
            else:
                advice = ("the file is damaged or not HDF5: give another file (a d2sfm output of an interrupted run "
                          "can be deleted: the rerun writes it again)")
            raise D2sfmError(f"{path}: cannot open as HDF5 ({str(error).splitlines()[0]}); {advice}") from None


def _entry_names(handle: h5py.File) -> list[str]:
    names: list[str] = []

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Group) and "keypoints" in item and not name.startswith(SCRATCH_GROUP):
            names.append(name)

    try:
        handle.visititems(visit)
    except DAMAGE:  # an interrupted write's dangling link: the readable entries, one at a time
        return [name for name, group in readable_entries(handle) if "keypoints" in group]
    return names


# HDF5 writes its metadata when a file is closed, in place and in several pieces, so a process killed in that
# moment (SIGKILL, power loss) can leave a link to an object that was never written ("addr overflow"). What d2sfm
# wrote before that close is intact: readers skip what they cannot read, and writers copy the readable entries into
# a new file first (salvage_hdf5), since appending to a damaged file could overwrite what its dangling links name.
DAMAGE = (RuntimeError, KeyError, OSError, ValueError)


def readable_entries(handle: h5py.File) -> Iterator[tuple[str, h5py.Group]]:
    """(name, group) of every entry (a group holding datasets: an image's features, a pair's matches) that can be
    opened, walking one link at a time so that a damaged one is passed over, not fatal."""
    def kinds(group: h5py.Group) -> list:
        """h5py.Dataset or h5py.Group for each member, None for one that cannot be opened."""
        found = []
        for child in group:
            try:
                found.append(group.get(child, getclass=True))
            except DAMAGE:
                found.append(None)
        return found

    def walk(group: h5py.Group, prefix: str) -> Iterator[tuple[str, h5py.Group]]:
        try:
            keys = list(group.keys())
        except DAMAGE:
            return
        for key in keys:
            name = prefix + key
            if name == SCRATCH_GROUP:
                continue
            try:
                item = group[key]
                members = kinds(item) if isinstance(item, h5py.Group) else []
            except DAMAGE:
                continue
            if h5py.Dataset not in members:
                yield from walk(item, name + "/")  # a folder of entries (or nothing)
            elif all(kind is h5py.Dataset for kind in members):  # an entry, every part of it readable
                yield name, item

    return walk(handle, "")


def salvage_hdf5(path: Path) -> tuple[int, int]:
    """Replace a damaged features or matches file by a copy of its readable entries (whole, or left out) and its
    attributes; returns (entries kept, entries lost)."""
    scratch = path.with_name(f".{path.name}.salvage.part")
    kept = lost = 0
    with open_hdf5(path, "r") as source, h5py.File(scratch, "w") as target:
        target.attrs.update(source.attrs)
        for name, group in readable_entries(source):
            try:
                copy = target.require_group(posixpath.dirname(name)) if posixpath.dirname(name) else target
                source.copy(group, copy, name=posixpath.basename(name))
                kept += 1
            except DAMAGE:
                if name in target:
                    del target[name]
                lost += 1
    scratch.replace(path)
    return kept, lost


def open_for_append(path: Path) -> h5py.File:
    """The file open for appending; one damaged by an interrupted write is salvaged first (read-only: opening a
    damaged file for writing could make it worse), with a warning: the entry being written when it stopped is lost
    and made again."""
    if path.is_file():
        with open_hdf5(path, "r") as handle:
            try:
                handle.visititems(lambda name, item: None)
                damage = None
            except DAMAGE as error:
                damage = error
        if damage is not None:
            kept, lost = salvage_hdf5(path)
            log.warning(f"{path}: damaged by an interrupted write ({str(damage).splitlines()[0]}); kept its {kept} "
                        f"readable entries{f', {lost} unreadable ones are made again' if lost else ''}")
    return open_hdf5(path, "a")


def list_entries(path: str | os.PathLike) -> list[str]:
    """Names of the complete entries of a features file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open_hdf5(path, "r") as handle:
        return _entry_names(handle)


def check_same_settings(path: Path, stored: dict, settings: dict, ignore: tuple[str, ...] = (),
                        fix: Callable[[dict, list[str]], str] | None = None, what: str = "features extracted") -> None:
    """Features (or matches: ``what``) of other settings, as recorded in the file, must never be mixed with, or
    taken for, new ones. ``fix(stored, differing keys)``: what the caller's user can do (default: the extract
    command's remedies)."""
    settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
    keys = sorted((set(stored) | set(settings)) - set(ignore))
    differing = [key for key in keys if stored.get(key) != settings.get(key)]
    if differing:
        changes = "; ".join(f"{k}: {stored.get(k)!r} there, {settings.get(k)!r} now" for k in differing)
        remedy = fix(stored, differing) if fix else "pass --overwrite to replace them or choose another output file"
        raise D2sfmError(f"{path}: holds {what} with other settings ({changes}); {remedy}")


def drop_empty_scratch(handle: h5py.File) -> None:
    """Remove the scratch parent once nothing is in it: a finished file holds only its images (or pairs), so that a
    script listing its keys sees no fake entry (costs a small group header per write, under 0.1% of an image's)."""
    scratch = handle.get(SCRATCH_GROUP)
    if isinstance(scratch, h5py.Group) and len(scratch) == 0:
        del handle[SCRATCH_GROUP]


def content_digest(keypoints: np.ndarray, descriptors: np.ndarray) -> str:
    """An image's features as written (arrays in their stored dtypes), in 32 hex digits: what matches.h5 records
    per pair to know the pair's matches were made from the features the file holds now. Re-extracting with the
    same settings on the same machine gives the same digest, so a rerun keeps matches that are still right."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (keypoints, descriptors):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array)
    return digest.hexdigest()


def _image_identity(group: h5py.Group) -> str:
    """The ``content_digest`` of an image group; for a group without one (an hloc file, or an earlier d2sfm's) a
    digest of its keypoints and the shape of its descriptors, read without the descriptors (100x the bytes)."""
    stored = group.attrs.get(DIGEST_ATTR)
    if stored is not None:
        return stored.decode() if isinstance(stored, bytes) else str(stored)
    try:
        keypoints = np.ascontiguousarray(group["keypoints"][()])
        shape = group["descriptors"].shape if "descriptors" in group else None
    except DAMAGE:
        return "unreadable"  # never equal to a recorded identity: the pair is matched again, and reading it says why
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{keypoints.dtype.str}{keypoints.shape}{shape}".encode())
    digest.update(keypoints)
    return "keypoints-" + digest.hexdigest()


def feature_identities(paths: str | os.PathLike | Sequence[str | os.PathLike], names: Iterable[str]
                       ) -> dict[str, str]:
    """The identity (``content_digest``) of each of ``names`` in the first of the features files ``paths`` that
    holds it, the file the matcher reads it from; names no file holds are left out. Reads attributes only."""
    wanted: set[str] = set(names)
    found: dict[str, str] = {}
    for path in [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(path) for path in paths]:
        left = sorted(wanted - found.keys())
        if not left or not path.is_file():
            continue
        with open_hdf5(path, "r") as handle:
            for name in left:
                try:
                    group = handle.get(name)
                except DAMAGE:
                    continue
                if isinstance(group, h5py.Group) and "keypoints" in group and not name.startswith(SCRATCH_GROUP):
                    found[name] = _image_identity(group)
    return found


def keypoint_counts(path: str | os.PathLike) -> dict[str, int]:
    """The number of keypoints of every image of a features file, from the datasets' shapes (nothing is read)."""
    with open_hdf5(Path(path), "r") as handle:
        return {name: int(handle[name]["keypoints"].shape[0]) for name in _entry_names(handle)}


class FeatureWriter:
    """Appends images to a features file whose settings must match; skips what is already complete."""

    def __init__(self, path: str | os.PathLike, settings: dict, descriptor_dtype=np.float16,
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.descriptor_dtype = np.dtype(descriptor_dtype)
        self.settings = json.loads(json.dumps({**settings, "descriptor_dtype": self.descriptor_dtype.name}))
        if overwrite and self.path.exists():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_for_append(self.path) as handle:
            if len(handle) and is_hloc_file(handle):
                raise D2sfmError(f"{self.path}: is a features file in hloc's conventions; d2sfm reads it but does not "
                                 "add to it: extract into another file, or give it whole to match/reconstruct")
            stored = handle.attrs.get("settings")
            if stored is not None:
                self._check_settings(json.loads(stored))
            else:
                handle.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
                for key, value in FORMAT_ATTRS.items():
                    handle.attrs[key] = value
            if SCRATCH_GROUP in handle:
                del handle[SCRATCH_GROUP]
            self.done = set(_entry_names(handle))

    def _check_settings(self, stored: dict) -> None:
        check_same_settings(self.path, stored, self.settings)

    def write(self, name: str, features: Features) -> None:
        keypoints = features.keypoints.astype(np.float32)
        descriptors = features.descriptors.astype(self.descriptor_dtype, copy=False)
        with open_hdf5(self.path, "a") as handle:
            scratch = f"{SCRATCH_GROUP}/{uuid.uuid4().hex}"
            group = handle.create_group(scratch)
            group.create_dataset("keypoints", data=keypoints)
            group.create_dataset("scales", data=features.scales.astype(np.float32))
            group.create_dataset("scores", data=features.scores.astype(np.float32))
            group.create_dataset("descriptors", data=descriptors)
            group.create_dataset("image_size", data=np.asarray(features.image_size, dtype=np.int64))
            if features.global_descriptor is not None:
                group.create_dataset("global_descriptor", data=features.global_descriptor.astype(np.float32))
            group.attrs[DIGEST_ATTR] = content_digest(keypoints, descriptors)
            if name in handle:
                del handle[name]
            if posixpath.dirname(name):
                handle.require_group(posixpath.dirname(name))
            handle.move(scratch, name)
            drop_empty_scratch(handle)
        self.done.add(name)

    def copy_from(self, shard: str | os.PathLike) -> int:
        """Write every image of another features file that this one lacks (a worker's shard); returns how many.
        A file made with other settings is an error, not a silent mix."""
        names = [name for name in list_entries(shard) if name not in self.done]
        if names and read_settings(shard) != self.settings:
            raise D2sfmError(f"{shard}: holds features extracted with other settings than {self.path}; delete it "
                             "or pass --overwrite")
        for name in names:
            self.write(name, read_features(shard, name))
        return len(names)


def read_features(path: str | os.PathLike, name: str) -> Features:
    with open_hdf5(Path(path), "r") as handle:
        group = _image_group(handle, path, name)
        keypoints = _keypoints(handle, group, path)
        descriptors = _read_dataset(path, name, group, "descriptors", 2)
        if is_hloc_file(handle):
            descriptors = descriptors.T  # hloc: D x N
        if len(descriptors) != len(keypoints):
            layout = "D x N" if is_hloc_file(handle) else "N x D"
            raise D2sfmError(f"{path}: image {name!r} has {len(keypoints)} keypoints but descriptors of shape "
                             f"{group['descriptors'].shape} (this file's layout is {layout}); {HLOC_ADVICE}")
        ones = np.ones(len(keypoints), np.float32)  # hloc files need not hold scales or scores
        return Features(
            keypoints=keypoints,
            scales=group["scales"][()] if "scales" in group else ones,
            scores=group["scores"][()] if "scores" in group else ones,
            descriptors=descriptors,
            image_size=_image_size(path, name, group),
            global_descriptor=group["global_descriptor"][()] if "global_descriptor" in group else None,
        )


def read_keypoints(path: str | os.PathLike, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Keypoints and (width, height) only: pose estimation needs no descriptors, which are 100x the bytes."""
    with open_hdf5(Path(path), "r") as handle:
        group = _image_group(handle, path, name)
        return _keypoints(handle, group, path), _image_size(path, name, group)


def read_global_descriptors(path: str | os.PathLike, names: Sequence[str]) -> np.ndarray:
    """(len(names), D) global descriptors, read in one file session without the local descriptors: retrieval over
    a large collection holds only these."""
    with open_hdf5(Path(path), "r") as handle:
        missing = [name for name in names if name not in handle or "global_descriptor" not in handle[name]]
        if missing:
            raise D2sfmError(f"{path}: no global descriptor for {missing[0]!r} ({len(missing)} image(s)); extract "
                             "the features again with this version of d2sfm.extract")
        return np.stack([handle[name]["global_descriptor"][()] for name in names])


def read_settings(path: str | os.PathLike) -> dict:
    """The extraction settings d2sfm recorded; {} for a file it did not write (hloc's)."""
    with open_hdf5(Path(path), "r") as handle:
        return json.loads(handle.attrs["settings"]) if "settings" in handle.attrs else {}


def iter_features(path: str | os.PathLike) -> Iterator[tuple[str, Features]]:
    for name in list_entries(path):
        yield name, read_features(path, name)
