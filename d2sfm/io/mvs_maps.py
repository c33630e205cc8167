"""COLMAP's depth and normal map files (``stereo/depth_maps/NAME.geometric.bin``): read, write, check complete.

The format is a text header ``width&height&channels&`` followed by little-endian float32 values, channel by channel,
each channel row by row. COLMAP writes these files in place, not atomically: a PatchMatch run killed while writing
leaves a truncated map that its next run would take as finished (it only checks that the file exists), so a resumed
run first removes maps whose size disagrees with their header.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d2sfm.io.atomic import atomic_path

MAP_KINDS = ("depth_maps", "normal_maps")
_MAX_HEADER = 64  # bytes: three integers and three '&'


def _read_header(handle) -> tuple[int, int, int, int] | None:
    """(width, height, channels, header length), or None when the start of the file is not a header."""
    start = handle.read(_MAX_HEADER)
    fields, position = [], 0
    for _ in range(3):
        end = start.find(b"&", position)
        if end < 0 or not start[position:end].isdigit():
            return None
        fields.append(int(start[position:end]))
        position = end + 1
    return fields[0], fields[1], fields[2], position


def read_map(path: str | os.PathLike) -> np.ndarray:
    """(height, width, channels) float32 array of a COLMAP map file."""
    with open(path, "rb") as handle:
        header = _read_header(handle)
        if header is None:
            raise ValueError(f"{path}: not a COLMAP map file (no 'width&height&channels&' header)")
        width, height, channels, offset = header
        handle.seek(offset)
        data = np.frombuffer(handle.read(), dtype="<f4")
    if data.size != width * height * channels:
        raise ValueError(f"{path}: {data.size} values, the header says {width}x{height}x{channels}")
    return data.reshape(channels, height, width).transpose(1, 2, 0).copy()


def write_map(path: str | os.PathLike, values: np.ndarray) -> None:
    """Write a (height, width) or (height, width, channels) array as a COLMAP map file, atomically."""
    values = np.asarray(values, dtype="<f4")
    if values.ndim == 2:
        values = values[..., None]
    height, width, channels = values.shape
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(f"{width}&{height}&{channels}&".encode())
            handle.write(np.ascontiguousarray(values.transpose(2, 0, 1)).tobytes())


def map_is_complete(path: str | os.PathLike) -> bool:
    """True when the file holds a header and exactly the float32 values it announces."""
    try:
        with open(path, "rb") as handle:
            header = _read_header(handle)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if header is None:
        return False
    width, height, channels, offset = header
    return width * height * channels > 0 and size == offset + 4 * width * height * channels


def map_path(workspace: str | os.PathLike, kind: str, image_name: str, input_type: str = "geometric") -> Path:
    """Where COLMAP's PatchMatch writes (and fusion reads) one image's map in a COLMAP-format workspace."""
    return Path(workspace) / "stereo" / kind / f"{image_name}.{input_type}.bin"


def remove_incomplete_maps(workspace: str | os.PathLike) -> list[Path]:
    """Delete the truncated depth and normal maps an interrupted PatchMatch left; returns the paths deleted."""
    removed = []
    for kind in MAP_KINDS:
        folder = Path(workspace) / "stereo" / kind
        for path in sorted(folder.rglob("*.bin")) if folder.is_dir() else []:
            if not map_is_complete(path):
                path.unlink()
                removed.append(path)
    return removed


def images_with_maps(workspace: str | os.PathLike, image_names: list[str], input_type: str = "geometric") -> list[str]:
    """The images whose depth and normal maps of ``input_type`` are both complete."""
    return [name for name in image_names
            if all(map_is_complete(map_path(workspace, kind, name, input_type)) for kind in MAP_KINDS)]
