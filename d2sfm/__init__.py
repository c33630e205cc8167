"""d2sfm: D2-Net features in a complete COLMAP pipeline."""

# The system zlib must be loaded before pycolmap. pycolmap 4.2's extension exports the zlib it links statically;
# loaded first, it leaves later PNG encoders (OpenCV's, Pillow's) freeing zlib memory with the wrong allocator, and
# the process aborts ("free(): invalid pointer"): `import pycolmap, numpy, cv2` then `cv2.imencode(".png", ...)`.
# Importing the standard library's zlib first (as importing d2sfm now does) avoids it; see tests/test_packaging.py.
# Where Python links zlib statically (python-build-standalone, as uv installs), that loads no libz.so.1, so the
# shared library is loaded by name as well.
import ctypes
import sys
import zlib  # noqa: F401

if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL("libz.so.1")
    except OSError:  # no system zlib: nothing for pycolmap to bind either
        pass

__version__ = "0.1.0"
