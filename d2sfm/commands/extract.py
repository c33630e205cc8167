"""``python -m d2sfm.extract``: images -> features.h5 with D2-Net keypoints and descriptors.

Images are decoded and resized in loader workers while the network runs; consecutive images of one network input
size are batched on the GPU. Finished images are skipped on a rerun, unreadable ones are skipped and listed, and
the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import posixpath
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from d2sfm.cluster.extract import DEFAULT_BATCH_IMAGES
from d2sfm.cluster.ray_backend import add_cluster_arguments
from d2sfm.commands.cli import (
    CommandParser,
    add_device_argument,
    add_weights_argument,
    number,
    resolve_device,
    run_main,
)
from d2sfm.commands.library_logs import add_verbose_argument, set_library_logs
from d2sfm.errors import D2sfmError
from d2sfm.features.extractor import (
    CONV_IMPLEMENTATIONS,
    NETWORK_STAGE,
    PRECISIONS,
    D2Extractor,
    ExtractionConfig,
    resize_for_network,
)
from d2sfm.features.gpu_batching import (
    DEFAULT_GPU_MEMORY_GIB,
    LOCAL_ADVICE,
    MemoryBoundedBatches,
    does_not_fit,
    out_of_memory,
)
from d2sfm.features.pyramid import MULTI_SCALE
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import read_text_file, write_text_atomic
from d2sfm.io.h5 import SCRATCH_GROUP, FeatureWriter
from d2sfm.io.images import ImageReadError, list_images, read_image_bgr
from d2sfm.pipeline.background import BackgroundWriter
from d2sfm.pipeline.orphans import end_with_this_process
from d2sfm.pipeline.stage_clock import StageClock, timed

# The stages --timings reports (the backbone's, NETWORK_STAGE, is timed by the extractor).
STARTUP_STAGE = "start-up (weights, model, device)"
WAITING_STAGE = "waiting for images"
DECODING_STAGE = "decoding (loader worker time)"
NETWORK_AND_DETECTION_STAGE = "network and detection"
DETECTION_STAGE = "detection"
WRITING_STAGE = "writing"
LOOP_STAGE = "extraction loop"
log = logging.getLogger("d2sfm")

TIMED_STAGES = (STARTUP_STAGE, WAITING_STAGE, DECODING_STAGE, NETWORK_STAGE, DETECTION_STAGE, WRITING_STAGE)

# --scales: the original D2-Net's pyramid is 0.5, 1, 2; scale s costs about s*s the memory of scale 1, so a 1600-px
# photo at scale 4 already needs tens of GiB, and larger scales only run out of memory.
MAX_SCALE = 4.0
# --workers: loader processes each hold a torch import and a prefetch queue; more than this only costs memory.
MAX_WORKERS = 64


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
    log.info("image names are the listed paths relative to %s", root)
    return Path(root), list(dict.fromkeys(Path(path).relative_to(root).as_posix() for path in absolute))


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise D2sfmError(f"{path}: no such image list; pass a text file with one image path per line")
    lines = read_text_file(path, "image list").splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise D2sfmError(f"{path}: the image list is empty; put one image path per line")
    return list(dict.fromkeys(names))


def name_problem(name: str) -> str | None:
    """Why an image name cannot be a features file's key, or None. A file name that is not UTF-8 (HDF5's and the
    COLMAP database's names are UTF-8 text) and a first folder named as features.h5's scratch group (its images
    would be taken for an interrupted write and dropped) are failed images with their reason, not a stopped run."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8 text; rename the file (e.g. with convmv)"
    if name.split("/")[0] == SCRATCH_GROUP:
        return f"the folder name {SCRATCH_GROUP} is reserved for features.h5's unfinished entries; rename the folder"
    return None


def printable(name: str) -> str:
    """A name as it can be printed and logged whatever its bytes (undecodable ones as \\udcXX)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def file_sha256(path: Path) -> str:
    """The weights' fingerprint in every features file; computed once per file version in a process (a pipeline
    asks for it when it checks features.h5 and again when it extracts)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def feature_settings(config: ExtractionConfig, weights: Path) -> dict:
    """What a features file records, and must match to be added to or reused: the config and the weights."""
    return {**config.as_dict(), "weights_sha256": file_sha256(weights)}


@dataclass
class PreparedImage:
    name: str
    image: np.ndarray | None  # resized BGR, None when the file could not be read
    original_size: tuple[int, int] | None  # (height, width) before resizing
    error: str | None
    seconds: float  # decoding and resizing, in the loader worker

    def __reduce__(self):
        """Cross from a loader worker as a tensor: PyTorch hands a tensor's memory over through shared memory,
        where a numpy array is pickled through a pipe and unpickled by the main thread, which the network loop
        needs (benchmarks/loader_handover.py)."""
        pixels = None if self.image is None else torch.from_numpy(np.ascontiguousarray(self.image))
        return _prepared_from_tensor, (self.name, pixels, self.original_size, self.error, self.seconds)


def _prepared_from_tensor(name, pixels, original_size, error, seconds) -> PreparedImage:
    return PreparedImage(name, None if pixels is None else pixels.numpy(), original_size, error, seconds)


class _PreparedImages(Dataset):
    """Reads and resizes images in loader workers; a bad image becomes an error message, not an exception."""

    def __init__(self, root: Path, names: Sequence[str], config: ExtractionConfig) -> None:
        self.root, self.names, self.config = root, list(names), config

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> PreparedImage:
        name, start = self.names[index], time.perf_counter()
        try:
            image = read_image_bgr(self.root / name)
        except ImageReadError as error:
            return PreparedImage(name, None, None, str(error), time.perf_counter() - start)
        resized = resize_for_network(image, self.config.max_edge, self.config.max_sum_edges)
        return PreparedImage(name, resized, image.shape[:2], None, time.perf_counter() - start)


def _as_is(item):
    return item


def _timed(items: Iterator[PreparedImage], clock: StageClock | None) -> Iterator[PreparedImage]:
    """The loader's images, charging the main loop's wait for them and the workers' decoding to the clock."""
    while True:
        with timed(clock, WAITING_STAGE):
            item = next(items, None)
        if item is None:
            return
        if clock is not None:
            clock.add(DECODING_STAGE, item.seconds)
        yield item


def _batches(loader: Iterator[PreparedImage], limit: Callable[[tuple], int]):
    """Group consecutive prepared images of equal size, at most ``limit(shape)`` of them (exact batching: no
    padding ever changes a feature). The limit is asked again for every image: it may change between batches."""
    pending: list[PreparedImage] = []
    for item in loader:
        if item.error is not None:
            yield [], [(item.name, item.error)]
            continue
        if pending and (len(pending) >= limit(pending[0].image.shape) or pending[0].image.shape != item.image.shape):
            yield pending, []
            pending = []
        pending.append(item)
    if pending:
        yield pending, []


def default_loading(device: torch.device) -> tuple[int, int]:
    """(batch size, loader workers) of the commands when the user gives none: on a GPU, batches of up to 4 (fewer
    where they would pass the memory budget: gpu_batching.py) fed by 4 decoding workers keep the network busy; on
    the CPU the network is the bottleneck and batching gains nothing."""
    return (4, 4) if device.type == "cuda" else (1, 1)


def extract_features(
    root: Path, names: Sequence[str], output: Path, extractor: D2Extractor, settings: dict,
    descriptor_dtype=np.float16, overwrite: bool = False, batch_size: int = 1, workers: int = 1,
    progress: bool = True, clock: StageClock | None = None, batches: MemoryBoundedBatches | None = None,
    too_large_advice: str = LOCAL_ADVICE,
) -> tuple[int, list[tuple[str, str]]]:
    """Extract every image not yet in ``output``. Returns (number extracted now, [(name, error), ...]).
    Decoding runs in loader workers and writing in a thread, both while the network works on other images;
    ``clock`` (optional) records where the time goes. On a GPU a batch holds at most ``batch_size`` images and
    no more than fit in the default memory budget; pass ``batches`` for another budget, to keep the limits it
    learns across calls or to read its peak afterwards. An image
    too large for the GPU even alone is a failure whose message ends with ``too_large_advice``."""
    batches = batches or MemoryBoundedBatches.for_device(extractor.device, batch_size)
    writer = FeatureWriter(output, settings, descriptor_dtype=descriptor_dtype, overwrite=overwrite)
    pending = [name for name in names if name not in writer.done]
    failures = [(printable(name), f"{printable(str(root / name))}: {name_problem(name)}")
                for name in pending if name_problem(name)]
    pending = [name for name in pending if not name_problem(name)]
    if not pending:
        return 0, failures
    loader = DataLoader(
        _PreparedImages(root, pending, extractor.config), batch_size=None, collate_fn=_as_is, num_workers=workers,
        prefetch_factor=max(2, batch_size) if workers else None, worker_init_fn=end_with_this_process(),
    )
    extracted = 0
    extractor.clock = clock

    def too_large(name: str, shape: tuple) -> str:
        if extractor.device.type == "cuda":
            return does_not_fit(name, shape, too_large_advice)
        return out_of_memory(name, shape, extractor.config.scales)

    def extract(items: Sequence[PreparedImage]) -> list:
        return extractor.extract_batch([item.image for item in items], [item.original_size for item in items],
                                       descriptor_dtype=writer.descriptor_dtype)  # converted on the device

    images = iter(loader)  # starts the loader processes before the writer thread exists (no fork with threads)
    with (tqdm(total=len(pending), desc="extracting D2 features", unit="img", disable=not progress) as bar,
          BackgroundWriter(writer.write, clock=clock, stage=WRITING_STAGE) as background):
        for batch, errors in _batches(_timed(images, clock), batches.limit):
            failures.extend(errors)
            if batch:
                with timed(clock, NETWORK_AND_DETECTION_STAGE):
                    results = batches.run(batch[0].image.shape, batch, extract)
                for item, features in zip(batch, results):
                    if features is None:  # too large for the memory even alone: a failed image, not a failed run
                        failures.append((item.name, too_large(str(root / item.name), item.image.shape)))
                        continue
                    background.put(item.name, features)
                    extracted += 1
                    bar.set_postfix(keypoints=len(features.keypoints), failed=len(failures), refresh=False)
            bar.update(len(batch) + len(errors))
    return extracted, failures


def write_timings(path: Path, clock: StageClock, extracted: int, device: torch.device,
                  peak_gpu_bytes: int | None) -> None:
    """Stage times, throughput and peak memory of this run, as JSON, and one line of it on the terminal."""
    seconds = dict(clock.seconds)
    seconds[DETECTION_STAGE] = max(0.0, seconds.get(NETWORK_AND_DETECTION_STAGE, 0.0) - seconds.get(NETWORK_STAGE, 0.0))
    loop = seconds.get(LOOP_STAGE, 0.0)
    timings = {
        "images": extracted, "device": str(device), "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "images_per_second_in_loop": extracted / loop if loop else None,
        "peak_gpu_memory_mb": peak_gpu_bytes / 2**20 if peak_gpu_bytes is not None else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_text_atomic(path, json.dumps(timings, indent=2))
    shown = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != NETWORK_AND_DETECTION_STAGE)
    print(f"timings ({path}): {shown}")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.extract",
        description="Extract D2-Net features from images into an HDF5 file (one group per image; keypoints in "
        "COLMAP's convention at the original resolution). Rerunning resumes: finished images are skipped.",
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
    parser.add_argument("--preprocessing", choices=["caffe", "torch"], default="caffe",
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
    parser.add_argument("--workers", type=number(int, at_least=0, at_most=MAX_WORKERS), default=None,
                        help="image loading processes (default 4 on GPU, 1 on CPU; 0 loads in the main process; "
                        f"at most {MAX_WORKERS})")
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
    device = resolve_device(args.device)
    weights = resolve_weights(args.weights, progress=not args.quiet)
    scales = args.scales or (MULTI_SCALE if args.multiscale else (1.0,))
    config = ExtractionConfig(
        scales=tuple(scales), max_edge=args.max_edge, max_sum_edges=args.max_sum_edges,
        preprocessing=args.preprocessing, use_relu=not args.no_relu, max_keypoints=args.max_keypoints,
        precision=args.precision, conv=args.conv, geometric_centres=args.geometric_centres,
    )
    default_batch, default_workers = default_loading(device)
    batch_size = args.batch_size if args.batch_size is not None else default_batch
    workers = args.workers if args.workers is not None else default_workers
    settings = feature_settings(config, weights)
    descriptor_dtype = np.float32 if args.float32_descriptors else np.float16
    if args.ray is not None:
        from d2sfm.cluster.extract import extract_on_cluster

        extracted, failures = extract_on_cluster(
            root, names, args.output, weights, config, settings, args.ray, descriptor_dtype=descriptor_dtype,
            overwrite=args.overwrite, workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker,
            batch_images=args.ray_batch, progress=not args.quiet, gpu_memory_gib=args.gpu_memory)
        return report(args.output, names, extracted, failures)
    clock = StageClock(device) if args.timings else None
    with timed(clock, STARTUP_STAGE):
        extractor = D2Extractor(weights, config, device)
    batches = MemoryBoundedBatches.for_device(device, batch_size, args.gpu_memory)
    with timed(clock, LOOP_STAGE):
        extracted, failures = extract_features(
            root, names, args.output, extractor, settings, descriptor_dtype=descriptor_dtype,
            overwrite=args.overwrite, batch_size=batch_size, workers=workers, progress=not args.quiet, clock=clock,
            batches=batches,
        )
    if clock is not None:
        write_timings(args.timings, clock, extracted, device, batches.run_peak_bytes())
    return report(args.output, names, extracted, failures)


def report(output: Path, names: Sequence[str], extracted: int, failures: list[tuple[str, str]]) -> int:
    """The command's summary line and failures; exit status 1 when any image failed."""
    skipped = len(names) - extracted - len(failures)
    print(f"wrote {output}: {extracted} images extracted, {skipped} already done, {len(failures)} failed")
    for name, error in failures:
        print(f"  failed: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_main(main)
