"""Image pairs to match: exhaustive, from a file, sequential (video), or by global-descriptor retrieval.

A pair list is a text file with one ``name0 name1`` per line, the format of hloc and of the localization
benchmark. Pairs are unordered: (a, b) and (b, a) are the same pair and kept once, in first-seen order.

Names are separated by white space, so a name that holds white space (``IMG 001.jpg``), a control character or a
line break, or that starts with ``"`` or ``#``, is written as a JSON string (``"IMG 001.jpg"``): every name a file
system allows round-trips, and lists of plain names stay exactly hloc's format. Lines end at ``\n`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import read_text_file, write_text_atomic
from d2sfm.io.h5 import read_global_descriptors

Pair = tuple[str, str]


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Drop self-pairs and repeats in either order, keeping the first occurrence."""
    seen: set[frozenset] = set()
    result = []
    for a, b in pairs:
        key = frozenset((a, b))
        if a != b and key not in seen:
            seen.add(key)
            result.append((a, b))
    return result


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], overlap: int = 10) -> list[Pair]:
    """Each image with the next ``overlap`` images in name order (frames of a video)."""
    ordered = sorted(names)
    count = len(ordered)
    return [(ordered[i], ordered[j]) for i in range(count) for j in range(i + 1, min(i + 1 + overlap, count))]


RETRIEVAL_ROWS = 4096  # similarity rows at a time: 4096 x 100,000 images is 1.6 GB, never N x N at once


def retrieval_pairs(names: Sequence[str], global_descriptors: np.ndarray, top_k: int = 5) -> list[Pair]:
    """Each image with its ``top_k`` most similar images by cosine of their global descriptors."""
    if len(names) != len(global_descriptors):
        raise ValueError("one global descriptor per name is needed")
    import torch  # here, not at the top: the command lines read EXHAUSTIVE_UP_TO and the pair lists without it

    k = min(top_k, len(names) - 1)
    if k <= 0:
        return []
    descriptors = torch.nn.functional.normalize(torch.as_tensor(np.asarray(global_descriptors, np.float32)), dim=1)
    neighbours = []
    for start in range(0, len(names), RETRIEVAL_ROWS):
        similarity = descriptors[start:start + RETRIEVAL_ROWS] @ descriptors.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = float("-inf")  # not with itself
        neighbours.append(similarity.topk(k, dim=1).indices.numpy())
    neighbours = np.concatenate(neighbours)
    return unique_pairs((names[i], names[j]) for i in range(len(names)) for j in neighbours[i])


def encode_name(name: str) -> str:
    """A name as a pair list writes it: as it is when plain, else as a JSON string (see the module's docstring)."""
    plain = name and not name.startswith(('"', "#")) and all(c.isprintable() and not c.isspace() for c in name)
    return name if plain else json.dumps(name, ensure_ascii=False)


_JSON = json.JSONDecoder()


def decode_names(line: str) -> list[str]:
    """The names on one line of a pair list: plain tokens and JSON strings; ValueError for a broken string."""
    names, index = [], 0
    while True:
        while index < len(line) and line[index].isspace():
            index += 1
        if index == len(line):
            return names
        if line[index] == '"':
            name, index = _JSON.raw_decode(line, index)
        else:
            end = index
            while end < len(line) and not line[end].isspace():
                end += 1
            name, index = line[index:end], end
        names.append(name)


def read_pairs(path: str | os.PathLike, known_names: Iterable[str] | None = None) -> list[Pair]:
    """Parse a pair list; every name must be among ``known_names`` when given (one clear error otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise D2sfmError(f"{path}: no such pair list; pass a text file with one 'name0 name1' per line (or, where the "
                         "command has them, exhaustive, sequential, retrieval or auto)")
    known = set(known_names) if known_names is not None else None
    pairs = []
    for number, line in enumerate(read_text_file(path, "pair list").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            parts = decode_names(line)
        except ValueError:
            parts = []
        if len(parts) < 2:
            raise D2sfmError(f"{path}:{number}: expected 'name0 name1' (a name with spaces in double quotes, as a "
                             f"JSON string), got {line!r}")
        a, b = parts[0], parts[1]
        if known is not None:
            for name in (a, b):
                if name not in known:
                    raise D2sfmError(
                        f"{path}:{number}: image {name!r} is not among the images (or has no features); "
                        "fix the pair list or add the image"
                    )
        pairs.append((a, b))
    return unique_pairs(pairs)


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    write_text_atomic(path, "".join(f"{encode_name(a)} {encode_name(b)}\n" for a, b in pairs))


EXHAUSTIVE_UP_TO = 100  # images; above this, --pairs auto uses retrieval


def choose_pairs(method: str, names: list[str], features_path: Path | None, top_k: int, overlap: int) -> list[Pair]:
    """The pairs of one of the methods (auto, exhaustive, sequential, retrieval) or of a pair-list file's path."""
    if method == "auto":
        method = "exhaustive" if len(names) <= EXHAUSTIVE_UP_TO else "retrieval"
    if method == "exhaustive":
        return exhaustive_pairs(names)
    if method == "sequential":
        return sequential_pairs(names, overlap)
    if method == "retrieval":
        return retrieval_pairs(names, read_global_descriptors(features_path, names), top_k)
    return read_pairs(method, known_names=names)
