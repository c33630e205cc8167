"""Matching every pair of a pair list into matches.h5: descriptors read once per image through a small cache, pairs
matched on the device, written as they finish; a rerun skips matched pairs, but matches again the pairs whose
images' features were extracted again since, and refuses other match settings than the file's.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from d2sfm.io.h5 import feature_identities, list_entries, read_features
from d2sfm.io.matches_h5 import MatchWriter
from d2sfm.matching.mnn import match_pair
from d2sfm.matching.pairs import Pair

FeatureFiles = str | Path | Sequence[str | Path]
MATCHER = "mutual nearest neighbours"


def matches_file_settings(min_similarity: float | None, ratio: float | None) -> dict:
    """What matches.h5 records and checks: everything the matches depend on besides the features."""
    return {"matcher": MATCHER, "min_similarity": min_similarity, "ratio": ratio}


class DescriptorCache:
    """Keeps the descriptors of recently used images on the device (pairs share images). Several features files
    can be read as one (a localization's queries beside its reference scene's): an image is read from the first
    file that holds it."""

    def __init__(self, features_path: FeatureFiles, device: torch.device, capacity: int = 64) -> None:
        self.paths = [Path(features_path)] if isinstance(features_path, (str, Path)) else list(map(Path, features_path))
        self.device, self.capacity = device, capacity
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._names: list[set[str]] | None = None

    def path_of(self, name: str) -> Path:
        if len(self.paths) == 1:
            return self.paths[0]
        if self._names is None:
            self._names = [set(list_entries(path)) for path in self.paths]
        return next((path for path, names in zip(self.paths, self._names) if name in names), self.paths[0])

    def identities(self, names: Sequence[str]) -> dict[str, str]:
        """The features identity of each name, from the file its descriptors are read from."""
        return feature_identities(self.paths, names)

    def get(self, name: str) -> torch.Tensor:
        if name in self.entries:
            self.entries.move_to_end(name)
            return self.entries[name]
        descriptors = torch.from_numpy(read_features(self.path_of(name), name).descriptors).to(self.device)
        self.entries[name] = descriptors
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return descriptors


def match_pairs(
    features_path: FeatureFiles, pairs: Sequence[Pair], matches_path: str | Path, device: torch.device | str = "cpu",
    min_similarity: float | None = None, ratio: float | None = None, overwrite: bool = False,
    progress: bool = True, flush_seconds: float = 5.0, keep_unrecorded: bool = False,
) -> int:
    """Match every pair not yet in ``matches_path``, or matched there from features extracted again since; returns
    how many pairs were matched now. ``features_path``: one features file, or several read as one (see
    DescriptorCache). A matches file of other settings is refused (``overwrite``: start it again);
    ``keep_unrecorded``: pairs an earlier release matched (no features recorded) are kept, for the pipelines,
    whose own records vouch for them."""
    device = torch.device(device)
    writer = MatchWriter(matches_path, matches_file_settings(min_similarity, ratio), overwrite=overwrite)
    cache = DescriptorCache(features_path, device)
    identities = cache.identities(sorted({name for pair in pairs for name in pair}))
    todo = writer.todo(pairs, identities, keep_unrecorded)
    pending: list = []
    last_flush = time.monotonic()
    for name0, name1 in tqdm(todo, desc="matching", unit="pair", disable=not progress):
        matches0, scores0 = match_pair(cache.get(name0), cache.get(name1), min_similarity, ratio)
        pending.append((name0, name1, matches0, scores0))
        if time.monotonic() - last_flush > flush_seconds:
            writer.write_many(pending, identities)
            pending, last_flush = [], time.monotonic()
    if pending:
        writer.write_many(pending, identities)
    return len(todo)
