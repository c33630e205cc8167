"""``python -m d2sfm.export hloc FEATURES [MATCHES] -o DIR``: d2sfm's features and matches in hloc's conventions,
so that hloc's tools (its matchers, triangulation, localization) read them as their own.

hloc's conventions, as its extract_features.py and match_features.py write them:

* features: one group per image name (slashes make nested groups) with ``keypoints`` (N, 2) in pixels with the
  centre of the top-left pixel at (0, 0) (COLMAP's 0.5 is added by hloc when it imports them), ``descriptors``
  (D, N), ``scores`` (N,) and ``image_size`` (width, height); float16 where hloc's ``as_half`` would store it.
* global descriptors, when the file holds them: ``global-feats.h5`` with one ``global_descriptor`` per image, as
  hloc's retrieval step reads them.
* matches: one group per pair named ``name0/name1`` with slashes inside the names replaced by '-' (d2sfm's layout
  already), ``matches0`` (N0,) the index in image 1 or -1 and ``matching_scores0`` (N0,) float16. hloc writes
  ``matches0`` as int16, which wraps above 32,767 keypoints; int16 is written where it holds, int32 otherwise.

The other way needs no command: every d2sfm command reads an hloc features file as it is (d2sfm.io).
Each output file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from d2sfm.cli import CommandParser, run_main
from d2sfm.errors import D2sfmError
from d2sfm.fileutil import atomic_path
from d2sfm.io import list_entries, open_hdf5, pair_keys, read_features, read_global_descriptors
from d2sfm.keypoints import colmap_xy_to_opencv_xy

HLOC_FEATURE_ATTRS = {"keypoint_convention": "hloc (pixel centres at integers)", "descriptor_layout": "D x N",
                      "exported_by": "d2sfm.export"}
INT16_LIMIT = np.iinfo(np.int16).max


def _group(handle: h5py.File, name: str) -> h5py.Group:
    if posixpath.dirname(name):
        handle.require_group(posixpath.dirname(name))
    return handle.create_group(name)


def export_hloc_features(features_path: Path, output: Path, global_output: Path, progress: bool = True
                         ) -> tuple[int, int]:
    """Write ``output``, and ``global_output`` when the images have global descriptors; returns (images, global
    descriptors written)."""
    names = list_entries(features_path)
    if not names:
        raise D2sfmError(f"{features_path}: no features in it; give the features.h5 of d2sfm.extract")
    with_global = []
    with atomic_path(output) as scratch, h5py.File(scratch, "w") as handle:
        for key, value in HLOC_FEATURE_ATTRS.items():
            handle.attrs[key] = value
        for name in tqdm(names, desc="features", unit="img", disable=not progress):
            features = read_features(features_path, name)
            group = _group(handle, name)
            group.create_dataset("keypoints", data=colmap_xy_to_opencv_xy(features.keypoints).astype(np.float32))
            group.create_dataset("descriptors", data=np.ascontiguousarray(features.descriptors.T))
            group.create_dataset("scores", data=features.scores.astype(np.float16))
            group.create_dataset("image_size", data=np.asarray(features.image_size, np.int64))
            if features.global_descriptor is not None:
                with_global.append(name)
    if with_global:  # 512 floats per image: all of them fit in memory even for 10^5 images
        descriptors = read_global_descriptors(features_path, with_global)
        with atomic_path(global_output) as scratch, h5py.File(scratch, "w") as handle:
            for name, descriptor in zip(with_global, descriptors):
                _group(handle, name).create_dataset("global_descriptor", data=descriptor)
    return len(names), len(with_global)


def export_hloc_matches(matches_path: Path, output: Path, progress: bool = True) -> int:
    with open_hdf5(matches_path) as source:
        keys = sorted(pair_keys(source))
        if not keys:
            raise D2sfmError(f"{matches_path}: no matches in it; give the matches.h5 of d2sfm.match")
        with atomic_path(output) as scratch, h5py.File(scratch, "w") as handle:
            for key in tqdm(keys, desc="matches", unit="pair", disable=not progress):
                matches0 = source[key]["matches0"][()]
                dtype = np.int16 if len(matches0) == 0 or matches0.max() <= INT16_LIMIT else np.int32
                group = _group(handle, key)
                group.create_dataset("matches0", data=matches0.astype(dtype))
                group.create_dataset("matching_scores0", data=source[key]["matching_scores0"][()].astype(np.float16))
    return len(keys)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.export", description=__doc__.split("\n\n")[0].replace(
        "``", ""))
    formats = parser.add_subparsers(dest="format", required=True)
    hloc = formats.add_parser("hloc", help="hloc's features and matches files",
                              description="Write FEATURES (and MATCHES) in hloc's conventions into DIR: features.h5, "
                              "global-feats.h5 (when there are global descriptors) and matches.h5.")
    hloc.add_argument("features", type=Path, help="d2sfm features file (features.h5)")
    hloc.add_argument("matches", type=Path, nargs="?", help="d2sfm matches file (matches.h5)")
    hloc.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    hloc.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in (args.features, args.matches):
        if path is not None and not path.is_file():
            raise D2sfmError(f"{path}: no such file; give the features.h5 / matches.h5 of a d2sfm run")
    with open_hdf5(args.features) as handle:
        if handle.attrs.get("keypoint_convention") != "colmap":
            raise D2sfmError(f"{args.features}: is already in hloc's conventions (not written by d2sfm.extract)")
    args.output.mkdir(parents=True, exist_ok=True)
    images, with_global = export_hloc_features(args.features, args.output / "features.h5",
                                               args.output / "global-feats.h5", progress=not args.quiet)
    print(f"wrote {args.output / 'features.h5'}: {images} images"
          + (f"; {args.output / 'global-feats.h5'}: {with_global} global descriptors" if with_global else ""))
    if args.matches is not None:
        pairs = export_hloc_matches(args.matches, args.output / "matches.h5", progress=not args.quiet)
        print(f"wrote {args.output / 'matches.h5'}: {pairs} pairs")
    return 0


if __name__ == "__main__":
    run_main(main)
