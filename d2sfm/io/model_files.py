"""Check a COLMAP model folder before pycolmap reads it.

pycolmap trusts the counts inside its binary files: a truncated ``points3D.bin`` or random bytes in ``cameras.bin``
make it reserve memory for billions of records (17 GB, deaf to SIGTERM) or fail with a bare ValueError. Here the
records are walked with ``struct`` first, so that a damaged file is one D2sfmError naming it, in well under a second
for a million points (1M points with 5-image tracks, a 91 MB ``points3D.bin``: 0.27 s on one core, file cached).

Binary formats, as pycolmap 4.2.1 writes them (COLMAP's ``reconstruction_io_binary.cc``; little-endian, every file
starts with a uint64 record count):

* cameras.bin: camera_id u32, model_id i32, width u64, height u64, then 8 bytes per parameter (count by model).
* images.bin: image_id u32, pose 7 f64, camera_id u32, name up to a NUL, num_points2D u64, then 24 bytes each.
* points3D.bin: point3D_id u64, xyz 3 f64, rgb 3 u8, error f64, track_length u64, then 8 bytes per element.
* rigs.bin (optional): rig_id u32, num_sensors u32, the reference sensor (8 bytes) when there is one, then per other
  sensor 8 bytes, a has_pose u8 and 56 bytes of pose when set.
* frames.bin (optional): frame_id u32, rig_id u32, pose 7 f64, num_data_ids u32, then 16 bytes each.

Text models are only checked for what pycolmap cannot be trusted with: bytes that are not UTF-8, a cut-short last
line in a file that starts with COLMAP's comment header, and a number of data lines that contradicts the header's
"# Number of points: N".
"""

from __future__ import annotations

import functools
import mmap
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from d2sfm.errors import D2sfmError

if TYPE_CHECKING:
    import pycolmap

BINARY_FILES = ("cameras.bin", "images.bin", "points3D.bin")
TEXT_FILES = ("cameras.txt", "images.txt", "points3D.txt")

_U32 = struct.Struct("<I").unpack_from
_I32 = struct.Struct("<i").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_U8 = struct.Struct("<B").unpack_from


class _Damage(Exception):
    """What is wrong inside one file; the caller adds the file's path."""


def damaged(path: str | os.PathLike, what: str) -> D2sfmError:
    return D2sfmError(f"{path}: damaged COLMAP model file ({what}); rebuild the model (delete the folder and rerun "
                      "reconstruct) or give another folder")


def read_model(path: str | os.PathLike) -> pycolmap.Reconstruction:
    """``pycolmap.Reconstruction(path)`` after :func:`check_model_folder`; whatever pycolmap still refuses (a track
    naming a missing image, say) becomes a D2sfmError naming the folder instead of a traceback."""
    import pycolmap

    check_model_folder(path)
    try:
        return pycolmap.Reconstruction(path)
    except (ValueError, RuntimeError, IndexError) as error:
        reason = " ".join(str(error).split())[-300:] or type(error).__name__
        raise damaged(path, f"pycolmap cannot read it: {reason}") from None


def check_model_folder(path: str | os.PathLike) -> None:
    """Raise D2sfmError unless ``path`` holds a COLMAP model whose files are whole. Binary wins over text when both
    are complete, as in pycolmap."""
    folder = Path(path)
    if all((folder / name).is_file() for name in BINARY_FILES):
        for name, walk in _BINARY_WALKS.items():
            if name in BINARY_FILES or (folder / name).is_file():
                _check_binary(folder / name, walk)
    elif all((folder / name).is_file() for name in TEXT_FILES):
        for name, (header, lines_per_record) in _TEXT_COUNTS.items():
            if name in TEXT_FILES or (folder / name).is_file():
                _check_text(folder / name, header, lines_per_record)
    else:
        raise D2sfmError(f"{folder}: not a COLMAP model (no cameras, images and points3D .bin or .txt files); give "
                         "a model folder such as SCENE/sparse/0")


def _check_binary(path: Path, walk: Callable[[mmap.mmap, int], int]) -> None:
    if path.stat().st_size < 8:  # (and mmap refuses an empty file)
        raise damaged(path, f"{path.stat().st_size} bytes, too short for even the record count")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size = len(data)
        try:
            end = walk(data, size)
        except _Damage as error:
            raise damaged(path, str(error)) from None
        except struct.error:
            raise damaged(path, "the file ends inside a record: it was cut short") from None
    if end != size:
        raise damaged(path, f"{size - end} bytes after the last record")


def _records(data: mmap.mmap, size: int, what: str, smallest: int) -> int:
    """The record count from the header, after checking that so many records of at least ``smallest`` bytes fit."""
    count = _U64(data, 0)[0]
    if count * smallest > size - 8:
        raise _Damage(f"the header counts {count} {what}, more than its {size} bytes can hold")
    return count


def _past_end(what: str, index: int, count: int) -> _Damage:
    return _Damage(f"{what} {index + 1} of {count} runs past the end of the file: a count in it is wrong or the "
                   "file was cut short")


@functools.cache
def _camera_param_counts() -> dict[int, int]:
    """Parameters per camera model id, from the installed pycolmap so that new models are known."""
    import pycolmap

    return {int(model): len(pycolmap.Camera.create_from_model_id(1, model, 1.0, 1, 1).params)
            for name, model in pycolmap.CameraModelId.__members__.items() if name != "INVALID"}


def _walk_cameras(data: mmap.mmap, size: int) -> int:
    count, offset, params = _records(data, size, "cameras", 24), 8, _camera_param_counts()
    for index in range(count):
        model = _I32(data, offset + 4)[0]
        if model not in params:
            raise _Damage(f"camera {index + 1} of {count} has unknown camera model id {model}")
        offset += 24 + 8 * params[model]
        if offset > size:
            raise _past_end("camera", index, count)
    return offset


def _walk_images(data: mmap.mmap, size: int) -> int:
    count, offset = _records(data, size, "images", 73), 8
    for index in range(count):
        name_end = data.find(b"\0", offset + 64)
        if name_end < 0:
            raise _past_end("image", index, count)
        try:
            data[offset + 64:name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise _Damage(f"the name of image {index + 1} of {count} is not UTF-8 text") from None
        offset = name_end + 9 + 24 * _U64(data, name_end + 1)[0]
        if offset > size:
            raise _past_end("image", index, count)
    return offset


def _walk_points(data: mmap.mmap, size: int) -> int:
    count, offset = _records(data, size, "3D points", 51), 8
    for index in range(count):  # the hot loop: a million points take about 0.3 s
        offset += 51 + 8 * _U64(data, offset + 43)[0]
        if offset > size:
            raise _past_end("3D point", index, count)
    return offset


def _walk_rigs(data: mmap.mmap, size: int) -> int:
    count, offset = _records(data, size, "rigs", 8), 8
    for index in range(count):
        sensors = _U32(data, offset + 4)[0]
        offset += 16 if sensors else 8
        for _ in range(max(sensors - 1, 0)):
            offset += 9 + (56 if _U8(data, offset + 8)[0] else 0)
            if offset > size:
                break
        if offset > size:
            raise _past_end("rig", index, count)
    return offset


def _walk_frames(data: mmap.mmap, size: int) -> int:
    count, offset = _records(data, size, "frames", 68), 8
    for index in range(count):
        offset += 68 + 16 * _U32(data, offset + 64)[0]
        if offset > size:
            raise _past_end("frame", index, count)
    return offset


_BINARY_WALKS = {"rigs.bin": _walk_rigs, "cameras.bin": _walk_cameras, "frames.bin": _walk_frames,
                 "images.bin": _walk_images, "points3D.bin": _walk_points}

# header comment COLMAP writes ("# Number of images: 3, mean ...") and data lines per record (an image's second
# line, its 2D points, is empty when it has none, so 1 to 2)
_TEXT_COUNTS = {"rigs.txt": ("rigs", (1, 1)), "cameras.txt": ("cameras", (1, 1)), "frames.txt": ("frames", (1, 1)),
                "images.txt": ("images", (1, 2)), "points3D.txt": ("points", (1, 1))}


def _check_text(path: Path, header: str, lines_per_record: tuple[int, int]) -> None:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise damaged(path, f"not UTF-8 text at byte {error.start}") from None
    if text.startswith("#") and not text.endswith("\n"):  # COLMAP's files: a header, every line ended
        raise damaged(path, "the last line has no newline: the file was cut short")
    declared = re.search(rf"^#\s*Number of {header}:\s*(\d+)", text, re.MULTILINE)
    if declared is None:
        return  # written by hand or by another tool: nothing to compare with
    count = int(declared.group(1))
    lines = sum(1 for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#"))
    if not lines_per_record[0] * count <= lines <= lines_per_record[1] * count:
        raise damaged(path, f"the header counts {count} {header} but the file holds {lines} data lines")
