"""The D2 feature stage shared by the pipelines (reconstruct, localize): their common options and one call that
extracts every missing image into features.h5."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.cli import resolve_device
from d2sfm.extract import extract_features, file_sha256
from d2sfm.extractor import CONV_IMPLEMENTATIONS, PRECISIONS, D2Extractor, ExtractionConfig
from d2sfm.pyramid import MULTI_SCALE, SINGLE_SCALE
from d2sfm.weights import resolve_weights


def add_feature_arguments(parser: argparse.ArgumentParser, max_edge: int = 1600) -> None:
    parser.add_argument("--single-scale", action="store_true",
                        help="single-scale D2 features (default: multi-scale 0.5, 1, 2, which registers far more "
                        "reliably; see docs/benchmarks.md)")
    parser.add_argument("--original-centres", action="store_true",
                        help="keep the original D2-Net keypoint positions (default: corrected cell centres)")
    parser.add_argument("--max-edge", type=int, default=max_edge,
                        help=f"network input size limit (default {max_edge}; keypoints are always returned at "
                        "the original resolution)")
    parser.add_argument("--max-keypoints", type=int, default=0, help="keep the best N keypoints per image")
    parser.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                        help="backbone convolutions (see d2sfm.extract --help)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="backbone arithmetic on a GPU (see d2sfm.extract --help)")


def feature_config(args: argparse.Namespace) -> ExtractionConfig:
    return ExtractionConfig(scales=SINGLE_SCALE if args.single_scale else MULTI_SCALE, max_edge=args.max_edge,
                            max_keypoints=args.max_keypoints, conv=args.conv, precision=args.precision,
                            geometric_centres=not args.original_centres)


def extract_missing(args: argparse.Namespace, image_dir: Path, names: Sequence[str], features_path: Path,
                    progress: bool = True) -> list[tuple[str, str]]:
    """Extract the images not yet in ``features_path``; returns [(name, error)] of unreadable ones."""
    device = resolve_device(args.device)
    weights = resolve_weights(args.weights, progress=progress)
    config = feature_config(args)
    extractor = D2Extractor(weights, config, device)
    settings = {**config.as_dict(), "weights_sha256": file_sha256(weights)}
    on_gpu = device.type == "cuda"
    _, failed = extract_features(image_dir, names, features_path, extractor, settings,
                                 batch_size=4 if on_gpu else 1, workers=4 if on_gpu else 1, progress=progress)
    return failed
