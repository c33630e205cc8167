"""d2sfm: D2-Net features in a complete COLMAP pipeline.

The Python API (``d2sfm.api``, documented in the README): ``extract``, ``pairs``, ``match``, ``reconstruct``,
``localize``, ``localize_images``, ``refine``, ``evaluate_poses``, ``evaluate_model``, ``train`` and
``export_hloc``, with the configuration dataclasses and presets of ``d2sfm.config`` (``preset("d2-ss")``). They
are loaded on first use, so that ``import d2sfm`` stays light (no torch, no pycolmap) for commands that read files
only.
"""

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

_API = {name: "d2sfm.api" for name in ("extract", "pairs", "match", "reconstruct", "localize", "localize_images",
                                        "refine", "evaluate_poses", "evaluate_model", "ExtractionResult")}
_API.update({"ReconstructionResult": "d2sfm.pipeline.reconstruct", "keep_freed_memory": "d2sfm.runtime.allocator"})
_API.update({name: "d2sfm.training.trainer" for name in ("train", "TrainingResult")})
_API.update({"TrainingConfig": "d2sfm.training.settings"})
_API.update({"export_hloc": "d2sfm.io.hloc_export", "HlocExport": "d2sfm.io.hloc_export"})
_API.update({name: "d2sfm.config" for name in (
    "FeatureConfig", "PairsConfig", "MatchConfig", "RefineConfig", "MappingConfig", "DenseConfig", "RunConfig",
    "ReconstructionConfig", "AachenConfig", "InLocConfig", "ImagesLocalizationConfig", "PRESETS", "ORIGINAL_D2",
    "preset")})
__all__ = sorted(_API)


def __getattr__(name: str):
    """The API's names, imported when first used (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'd2sfm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
