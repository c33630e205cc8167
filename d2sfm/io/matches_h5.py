"""matches.h5: hloc's layout, one group per pair (``name0/name1``, '/' inside a name written as '-').

``matches0`` (N0,) int32, the index of the matched keypoint in image 1 or -1, and ``matching_scores0`` (N0,).
d2sfm adds what hloc's readers ignore: the file's match settings (attribute ``settings``, JSON, beside
``d2sfm_format``) and on each pair the identities of the features it was matched from (``features0``,
``features1``: the images' ``content_digest``), so that a rerun neither mixes other settings in nor keeps
matches whose keypoint indices point into features extracted since.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.h5 import (
    DAMAGE,
    FORMAT_ATTRS,
    SCRATCH_GROUP,
    check_same_settings,
    drop_empty_scratch,
    open_for_append,
    open_hdf5,
    readable_entries,
)

log = logging.getLogger("d2sfm")


MATCHES_FORMAT = "matches-1"
PAIR_IDENTITY_ATTRS = ("features0", "features1")
MATCHES_FIX = "pass --overwrite to match every pair again, or choose another output file"


def pair_key(name0: str, name1: str) -> str:
    return f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"


def pair_keys(handle: h5py.File) -> set[str]:
    """The complete pairs of an open matches file, as ``pair_key`` names."""
    try:
        return {
            f"{first}/{second}"
            for first, group in handle.items() if first != SCRATCH_GROUP and isinstance(group, h5py.Group)
            for second in group
        }
    except DAMAGE:  # an interrupted write's dangling link: the readable pairs, one at a time
        return {name for name, _ in readable_entries(handle)}


def matched_pairs(path: str | os.PathLike) -> set[str]:
    """The complete pairs of a matches file, as ``pair_key`` names, read without writing to it (opening for append
    rewrites the file's metadata: a run that stops early must leave its inputs as they were)."""
    if not Path(path).is_file():
        return set()
    with open_hdf5(Path(path), "r") as handle:
        return pair_keys(handle)


def pair_identity(group: h5py.Group) -> tuple[str, str] | None:
    """The identities of the features a pair was matched from; None where the file does not say (an earlier
    d2sfm's or another program's matches)."""
    values = [group.attrs.get(key) for key in PAIR_IDENTITY_ATTRS]
    if any(value is None for value in values):
        return None
    return tuple(value.decode() if isinstance(value, bytes) else str(value) for value in values)


def pairs_to_match(path: str | os.PathLike, pairs: Sequence[tuple[str, str]],
                   identities: Mapping[str, str] | None,
                   keep_unrecorded: bool = False) -> tuple[list[tuple[str, str]], int, int]:
    """The pairs of ``pairs`` with no current matches in the matches file ``path`` (in either order), and how many
    of them have matches from other features (re-extracted since) or from features it does not name (an earlier
    d2sfm's file; ``keep_unrecorded``: kept, where the caller's own record vouches for them). ``identities``: each
    image's features (``feature_identities``); None: any stored pair counts."""
    if not Path(path).is_file():
        return list(pairs), 0, 0
    todo, changed, unrecorded = [], 0, 0
    with open_hdf5(Path(path), "r") as handle:
        keys = pair_keys(handle)
        for name0, name1 in pairs:
            key = next((k for k in (pair_key(name0, name1), pair_key(name1, name0)) if k in keys), None)
            if key is None:
                todo.append((name0, name1))
                continue
            if identities is None:
                continue
            if name0 not in identities or name1 not in identities:  # no features: matching it says so
                todo.append((name0, name1))
                continue
            try:
                stored = pair_identity(handle[key])
            except DAMAGE:
                todo.append((name0, name1))
                continue
            if stored is not None and key != pair_key(name0, name1):
                stored = stored[::-1]
            if stored is None:
                unrecorded += 1
                if not keep_unrecorded:
                    todo.append((name0, name1))
            elif stored != (identities[name0], identities[name1]):
                changed += 1
                todo.append((name0, name1))
    return todo, changed, unrecorded


def _features_file_note(handle: h5py.File) -> str | None:
    """Why an existing file is a features file and not a matches file, or None."""
    if handle.attrs.get("d2sfm_format") == FORMAT_ATTRS["d2sfm_format"] or "keypoint_convention" in handle.attrs:
        return "d2sfm features file"
    if handle.attrs.get("d2sfm_format") == MATCHES_FORMAT:
        return None
    first = next(readable_entries(handle), None)  # hloc's features: no attributes, but keypoints in each entry
    if first is not None and "keypoints" in first[1] and "matches0" not in first[1]:
        return "features file (its entries hold keypoints)"
    return None


class MatchWriter:
    """Appends pair matches; a pair already present in either order counts as done (``has``), and ``todo`` says
    which pairs need matching once the features are known. ``settings``: what the matches depend on besides the
    features (None: not recorded or checked); a file of other settings is refused, as features.h5 is."""

    def __init__(self, path: str | os.PathLike, settings: dict | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings)) if settings is not None else None
        if self.path.is_file():  # read-only first: a refused run leaves the file as it was
            with open_hdf5(self.path, "r") as handle:
                note = _features_file_note(handle)  # before --overwrite deletes anything
                if note:
                    raise D2sfmError(f"{self.path}: is a {note}, not a matches file; writing matches into it would "
                                     "mix the two: give another output file for the matches (-o matches.h5)")
                stored = handle.attrs.get("settings")
                if not overwrite and self.settings is not None and stored is not None:
                    check_same_settings(self.path, json.loads(stored), self.settings, fix=lambda *_: MATCHES_FIX,
                                        what="matches made")
        if overwrite and self.path.exists():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_for_append(self.path) as handle:
            self.done = pair_keys(handle)
            if self.settings is not None and "settings" not in handle.attrs:
                if self.done:
                    log.warning(f"{self.path}: records neither the settings nor the features its {len(self.done)} "
                                "pairs were matched with (an earlier d2sfm's or another program's file): each pair "
                                "is matched again when asked for")
                handle.attrs["settings"] = json.dumps(self.settings, sort_keys=True)
                handle.attrs["d2sfm_format"] = MATCHES_FORMAT
            if SCRATCH_GROUP in handle:
                del handle[SCRATCH_GROUP]

    def todo(self, pairs: Sequence[tuple[str, str]], identities: Mapping[str, str],
             keep_unrecorded: bool = False) -> list[tuple[str, str]]:
        """The pairs to match now: absent, or matched from other features than ``identities`` (re-extracted since,
        or, unless ``keep_unrecorded``, not recorded: an earlier release's), these logged with a count."""
        todo, changed, unrecorded = pairs_to_match(self.path, pairs, identities, keep_unrecorded)
        if changed:
            log.info(f"  {self.path}: {changed} pair(s) are matched again: features of their images were extracted "
                     "again since they were matched")
        if unrecorded and keep_unrecorded:
            log.info(f"  {self.path}: {unrecorded} pair(s) of an earlier release record no features; kept, as the "
                     "run's record vouches for them")
        elif unrecorded:
            log.info(f"  {self.path}: {unrecorded} pair(s) are matched again: the file does not record which features "
                     "they were matched from")
        return todo

    def write_many(self, results: list[tuple[str, str, np.ndarray, np.ndarray]],
                   identities: Mapping[str, str] | None = None) -> None:
        """``results``: (name0, name1, matches0 (N0,) int, scores0 (N0,)) each, written in one file session,
        each pair complete or absent; ``identities``: the images' features identities (``feature_identities``),
        recorded with each pair."""
        identities = identities or {}
        self._write([(pair_key(name0, name1), matches0, scores0,
                      (identities.get(name0), identities.get(name1))) for name0, name1, matches0, scores0 in results])

    def _write(self, entries: list[tuple[str, np.ndarray, np.ndarray, tuple | None]]) -> None:
        with open_hdf5(self.path, "a") as handle:
            for key, matches0, scores0, identity in entries:
                scratch = f"{SCRATCH_GROUP}/{uuid.uuid4().hex}"
                group = handle.create_group(scratch)
                group.create_dataset("matches0", data=np.asarray(matches0, dtype=np.int32))
                group.create_dataset("matching_scores0", data=np.asarray(scores0, dtype=np.float16))
                if identity is not None and None not in identity:
                    for attr, value in zip(PAIR_IDENTITY_ATTRS, identity):
                        group.attrs[attr] = value
                if key in handle:
                    del handle[key]
                handle.require_group(posixpath.dirname(key))
                handle.move(scratch, key)
                self.done.add(key)
            drop_empty_scratch(handle)

    def copy_from(self, shard: str | os.PathLike) -> int:
        """Write every pair of another matches file (a worker's shard) that this one lacks or holds from other
        features; returns how many. A shard of other settings is an error, not a silent mix."""
        with open_hdf5(Path(shard), "r") as source:
            stored = source.attrs.get("settings")
            if self.settings is not None and stored is not None and json.loads(stored) != self.settings:
                raise D2sfmError(f"{shard}: holds matches made with other settings than {self.path}; delete it or "
                                 "pass --overwrite")
            keys = sorted(pair_keys(source))
            identities = {key: pair_identity(source[key]) for key in keys}
        with open_hdf5(self.path, "r") as target:
            missing = [key for key in keys if key not in self.done or (
                identities[key] is not None and pair_identity(target[key]) != identities[key])]
        for start in range(0, len(missing), 1000):  # a thousand pairs at a time: memory stays bounded
            with open_hdf5(Path(shard), "r") as source:
                entries = [(key, source[key]["matches0"][()], source[key]["matching_scores0"][()], identities[key])
                           for key in missing[start:start + 1000]]
            self._write(entries)  # keys are in pair_key form already ('/' inside names was replaced)
        return len(missing)


def read_matches(path: str | os.PathLike, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) keypoint indices into (name0, name1) and their (K,) scores, whichever order the pair was stored."""
    with open_hdf5(Path(path), "r") as handle:
        for key, reverse in ((pair_key(name0, name1), False), (pair_key(name1, name0), True)):
            if key in handle:
                matches0 = handle[key]["matches0"][()]
                scores0 = handle[key]["matching_scores0"][()].astype(np.float32)
                rows = np.flatnonzero(matches0 >= 0)
                pairs = np.stack([rows, matches0[rows]], axis=1).astype(np.int64)
                return (pairs[:, ::-1].copy() if reverse else pairs), scores0[rows]
    raise D2sfmError(f"{path}: no matches for the pair {name0} {name1}; run d2sfm.match on the pair list first")
