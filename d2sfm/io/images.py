"""Reading images the way COLMAP does, so that keypoints line up with what pycolmap later reads for MVS.

* EXIF orientation is ignored, as COLMAP ignores it: pycolmap's ``Bitmap.read`` returns the stored pixel grid,
  and keypoints must be expressed on that grid (checked by a test against pycolmap itself).
* Grayscale is repeated to three channels; an alpha channel is dropped; 16-bit images are scaled to 0..255.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import read_text_file

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".jp2"}

log = logging.getLogger("d2sfm")


class ImageReadError(D2sfmError):
    """An image file that cannot be decoded; batch commands skip it and report it at the end."""


def read_image_bgr(path: str | os.PathLike) -> np.ndarray:
    """Return the image as an (H, W, 3) uint8 BGR array on its stored pixel grid."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file; check the image folder or list")
    data = np.fromfile(path, dtype=np.uint8)  # also reads non-ASCII paths, which cv2.imread cannot on Windows
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: cannot be decoded as an image; remove it or convert it to JPEG/PNG")
    return to_bgr_uint8(image, path)


def to_bgr_uint8(image: np.ndarray, source: str | os.PathLike = "image") -> np.ndarray:
    """Normalise any decoded image (gray, BGR, BGRA; 8, 16 bit or float) to (H, W, 3) uint8 BGR."""
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{source}: unsupported pixel type {image.dtype}; convert it to 8- or 16-bit")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    elif channels != 3:
        raise ImageReadError(f"{source}: {channels} channels; convert it to gray, RGB or RGBA")
    if min(image.shape[:2]) < 8:
        raise ImageReadError(f"{source}: {image.shape[1]}x{image.shape[0]} pixels is too small for D2-Net")
    return np.ascontiguousarray(image)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursively), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise D2sfmError(f"{folder}: no such image folder; pass a folder of images or an image list file")
    names = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not names:
        raise D2sfmError(
            f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); put images there"
        )
    return names


def read_refinement_image(path: Path) -> np.ndarray:
    """The BGR photo behind a database's keypoints; one that cannot be read is a one-line error naming it."""
    try:
        return read_image_bgr(path)
    except (OSError, ValueError) as error:
        raise D2sfmError(f"{path}: cannot read the image for refinement ({error}); pass the folder the "
                         "scene was built from with --images") from None


def gray_image_reader(names: dict[int, str], image_dir: Path):
    """image id -> float32 grayscale in [0, 1] of ``image_dir / names[id]``, for keypoint refinement."""
    def read(image_id: int) -> np.ndarray:
        image = read_refinement_image(image_dir / names[image_id])
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    return read


def image_sources(images: Path, image_list: Path | None) -> tuple[Path, list[str]]:
    """(root, names): every image under a folder, the names listed in ``image_list`` relative to the folder,
    or, when ``images`` is a text file, the paths it lists (relative to the current folder or absolute).

    Names are keys of features.h5 and must be the same on every run for a rerun to resume: a listed path is
    normalised (``./a.jpg`` is ``a.jpg``), and when a list file holds an absolute path or one outside the current
    folder, every name is taken relative to the deepest folder that holds all the listed photos."""
    if images.is_file() and image_list is None:
        return list_file_sources(_read_list(images))
    if not images.is_dir():
        raise D2sfmError(f"{images}: no such folder or image list; pass a folder of images or a text file of paths")
    if image_list is None:
        return images, list_images(images)
    names = [posixpath.normpath(name) for name in _read_list(image_list)]
    outside = [name for name in names if posixpath.isabs(name) or name.split("/")[0] == ".."]
    if outside:
        raise D2sfmError(f"{image_list}: {outside[0]!r} is not inside {images}; --image-list names photos relative to "
                         "the folder (or give the list alone, without the folder)")
    return images, list(dict.fromkeys(names))


def list_file_sources(paths: Sequence[str]) -> tuple[Path, list[str]]:
    """(root, names) of the paths a list file gives (see ``image_sources``)."""
    names = [posixpath.normpath(path) for path in paths]
    if not any(posixpath.isabs(name) or name.split("/")[0] == ".." for name in names):
        return Path("."), list(dict.fromkeys(names))
    absolute = [os.path.abspath(name) for name in names]
    root = os.path.commonpath([os.path.dirname(path) for path in absolute])
    log.info("  image names are the listed paths relative to %s", root)
    return Path(root), list(dict.fromkeys(Path(path).relative_to(root).as_posix() for path in absolute))


def _read_list(path: Path) -> list[str]:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise D2sfmError(f"{path}: a photo, where a folder of photos or a text file listing them is expected; put the "
                         "photo in a folder and pass the folder")
    if not path.is_file():
        raise D2sfmError(f"{path}: no such image list; pass a text file with one image path per line")
    lines = read_text_file(path, "image list").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise D2sfmError(f"{path}: the image list is empty; put one image path per line")
    return list(dict.fromkeys(names))
