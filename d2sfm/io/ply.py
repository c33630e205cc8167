"""The binary PLY files COLMAP writes (fused points, Poisson meshes): their vertex count and vertex properties.

Read here without a mesh library: COLMAP's files are always ``binary_little_endian`` with a fixed set of scalar
vertex properties, and reading them is a header parse and one ``numpy.frombuffer``.
"""

from __future__ import annotations

import os

import numpy as np

from d2sfm.errors import D2sfmError

_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
              "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2"}


def _header(path: str | os.PathLike) -> tuple[list[str], int]:
    """The header's lines and its length in bytes."""
    with open(path, "rb") as handle:
        if handle.readline().strip() != b"ply":
            raise D2sfmError(f"{path}: not a PLY file; delete it and rerun the step that writes it")
        lines, length = [], 4
        for line in handle:
            length += len(line)
            text = line.decode("ascii", "replace").strip()
            if text == "end_header":
                return lines, length
            lines.append(text)
    raise D2sfmError(f"{path}: PLY header without end_header (a truncated file); delete it and rerun")


def count_vertices(path: str | os.PathLike) -> int:
    """The number of vertices (points) a PLY file announces."""
    for line in _header(path)[0]:
        if line.startswith("element vertex"):
            return int(line.split()[2])
    raise D2sfmError(f"{path}: PLY file without an 'element vertex' line")


def read_vertices(path: str | os.PathLike) -> np.ndarray:
    """The vertex records of a binary little-endian PLY file as a structured array (fields x, y, z, ...)."""
    lines, offset = _header(path)
    if "format binary_little_endian 1.0" not in lines:
        raise D2sfmError(f"{path}: only binary little-endian PLY files are read here")
    fields, in_vertices, count = [], False, 0
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "element":
            in_vertices = words[1] == "vertex"
            count = int(words[2]) if in_vertices else count
        elif words[0] == "property" and in_vertices:
            if words[1] == "list":
                raise D2sfmError(f"{path}: list properties on vertices are not supported")
            if words[1] not in _PLY_TYPES:
                raise D2sfmError(f"{path}: unknown PLY property type {words[1]!r}")
            fields.append((words[2], _PLY_TYPES[words[1]]))
    with open(path, "rb") as handle:
        handle.seek(offset)
        return np.fromfile(handle, dtype=np.dtype(fields), count=count)
