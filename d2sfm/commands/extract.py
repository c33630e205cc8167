"""``python -m d2sfm.extract``: images -> features.h5 with D2-Net keypoints and descriptors.

Images are decoded and resized in loader workers while the network runs; consecutive images of one network input
size are batched on the GPU. Finished images are skipped on a rerun, unreadable ones are skipped and listed, and
the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from d2sfm.cluster.ray_backend import DEFAULT_BATCH_IMAGES
from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.library_logs import add_verbose_argument, set_library_logs
from d2sfm.commands.options import (
    add_cluster_arguments,
    add_device_argument,
    add_weights_argument,
    number,
    run_config,
)
from d2sfm.config import FeatureConfig
from d2sfm.features.settings import (
    CONV_IMPLEMENTATIONS,
    DEFAULT_GPU_MEMORY_GIB,
    MAX_LOADER_WORKERS,
    MAX_SCALE,
    MULTI_SCALE,
    PRECISIONS,
    PREPROCESSINGS,
)
from d2sfm.io.images import image_sources

log = logging.getLogger("d2sfm")




def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.extract",
        description="Extract D2-Net features from images into an HDF5 file (one group per image; keypoints in "
        "COLMAP's convention at the original resolution). Rerunning resumes: finished images are skipped. The "
        "defaults are the original extractor's (single scale, the original's keypoint centres); reconstruct, "
        "localize and the Python API default to --multiscale --geometric-centres.",
    )
    parser.add_argument("images", type=Path, help="a folder of images (searched recursively) or a text file "
                        "listing image paths, one per line")
    parser.add_argument("--image-list", type=Path, default=None,
                        help="with a folder: extract only the images named in this file (paths relative to it)")
    parser.add_argument("--output", "-o", type=Path, default=Path("features.h5"),
                        help="features file to write or resume (default: features.h5)")
    add_weights_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--multiscale", action="store_true",
                        help="multi-scale pyramid at scales 0.5, 1, 2 (the paper's D2-Net MS); default single scale")
    parser.add_argument("--scales", type=number(float, above=0, at_most=MAX_SCALE), nargs="+", default=None,
                        help="custom pyramid scales, coarse to fine (overrides --multiscale), e.g. 0.5 1 2; each "
                        f"above 0 and at most {MAX_SCALE:g} (scale s costs about s*s times the memory and time of "
                        "scale 1)")
    parser.add_argument("--max-edge", type=number(int, at_least=16), default=1600,
                        help="resize so that the longer side is at most this many pixels (default 1600)")
    parser.add_argument("--max-sum-edges", type=number(int, at_least=32), default=2800,
                        help="then resize so that width + height is at most this (default 2800)")
    parser.add_argument("--max-keypoints", type=number(int, at_least=0), default=0,
                        help="keep at most this many keypoints per image, the highest-scoring (default: all)")
    parser.add_argument("--preprocessing", choices=PREPROCESSINGS, default="caffe",
                        help="input normalisation the weights were trained with (caffe for all official D2-Net "
                        "weights: BGR minus the ImageNet means)")
    parser.add_argument("--no-relu", action="store_true", help="no ReLU after conv4_3 (the original's --no-relu)")
    parser.add_argument("--geometric-centres", action="store_true",
                        help="put keypoints at the true centres of their feature cells; the original is off by "
                        "2 px per pyramid level (4, 2, 1 px at scales 0.5, 1, 2), which hurts multi-scale SfM. "
                        "Default: the original's positions, for parity")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="backbone arithmetic on a GPU: fp32 (default, matches the original), bf16 or fp16 "
                        "(faster, less memory, slightly different keypoints)")
    parser.add_argument("--conv", choices=CONV_IMPLEMENTATIONS, default="exact",
                        help="backbone convolutions: exact (default; the original's kernels, equal to it by the "
                        "README's parity criteria) or winograd (CPU only, ~2x faster backbone, coarser rounding "
                        "moves up to ~0.5%% of keypoints that sit on a threshold)")
    parser.add_argument("--float32-descriptors", action="store_true",
                        help="store descriptors as float32 (default float16, half the disk space)")
    parser.add_argument("--batch-size", type=number(int, at_least=1), default=None,
                        help="at most this many images per network call when they share a size (default 4 on GPU, "
                        "1 on CPU); on a GPU fewer where more would pass --gpu-memory")
    parser.add_argument("--gpu-memory", type=number(float, above=0), default=DEFAULT_GPU_MEMORY_GIB, metavar="GIB",
                        help="GPU memory the extraction may use, weights included, in GiB (default %(default)s; at "
                        "most 80%% of the GPU): the first image of each size is measured alone and batches hold "
                        "what fits; nothing is padded. An image too large alone is listed as failed. With --ray, "
                        "for each worker's GPU")
    parser.add_argument("--workers", type=number(int, at_least=0, at_most=MAX_LOADER_WORKERS), default=None,
                        help="image loading processes (default 4 on GPU, 1 on CPU; 0 loads in the main process; "
                        f"at most {MAX_LOADER_WORKERS})")
    add_cluster_arguments(parser, "images", DEFAULT_BATCH_IMAGES)
    parser.add_argument("--timings", type=Path, default=None, metavar="FILE",
                        help="write where the time went (start-up, waiting for images, decoding, network, detection, "
                        "writing; GPU-synchronised, which costs a little speed) and peak memory to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="delete the output file first and redo every image")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_library_logs(args.verbose)
    root, names = image_sources(args.images, args.image_list)
    config = FeatureConfig(
        scales=tuple(args.scales or (MULTI_SCALE if args.multiscale else (1.0,))), max_edge=args.max_edge,
        max_sum_edges=args.max_sum_edges, preprocessing=args.preprocessing, use_relu=not args.no_relu,
        max_keypoints=args.max_keypoints, precision=args.precision, conv=args.conv,
        geometric_centres=args.geometric_centres, weights=args.weights,
        float32_descriptors=args.float32_descriptors)
    run = dataclasses.replace(run_config(args), batch_size=args.batch_size, loader_workers=args.workers,
                              gpu_memory_gib=args.gpu_memory)
    with loading_the_work():  # the work's imports (torch): after the options and the inputs are checked
        from d2sfm.api import extract

    result = extract(root, args.output, config, names=names, run=run, timings=args.timings)
    return report(args.output, names, result.extracted, result.failures)


def report(output: Path, names: Sequence[str], extracted: int, failures: list[tuple[str, str]]) -> int:
    """The command's summary line and failures; exit status 1 when any image failed."""
    skipped = len(names) - extracted - len(failures)
    print(f"wrote {output}: {extracted} images extracted, {skipped} already done, {len(failures)} failed")
    for name, error in failures:
        print(f"  failed: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    run_main(main)
