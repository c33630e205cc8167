"""The extraction loop: every image not yet in features.h5 decoded in loader processes, run through the network in
batches that fit the device's memory, and written in a thread, so that decoding, the network and writing overlap.
Images that cannot be read or are too large are failures with their reason, not a stopped run; a rerun skips what is
written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from d2sfm.features.extractor import (
    NETWORK_STAGE,
    D2Extractor,
    ExtractionConfig,
    network_input_size,
    resize_for_network,
)
from d2sfm.features.gpu_batching import (
    LOCAL_ADVICE,
    MemoryBoundedBatches,
    does_not_fit,
    out_of_memory,
)
from d2sfm.io.atomic import write_text_atomic
from d2sfm.io.h5 import SCRATCH_GROUP, FeatureWriter
from d2sfm.io.images import ImageReadError, read_image_bgr
from d2sfm.runtime.background import BackgroundWriter
from d2sfm.runtime.orphans import end_with_this_process
from d2sfm.runtime.stage_clock import StageClock, timed

log = logging.getLogger("d2sfm")

# The stages --timings reports (the backbone's, NETWORK_STAGE, is timed by the extractor).
STARTUP_STAGE = "start-up (weights, model, device)"


WAITING_STAGE = "waiting for images"


DECODING_STAGE = "decoding (loader worker time)"


NETWORK_AND_DETECTION_STAGE = "network and detection"


DETECTION_STAGE = "detection"


WRITING_STAGE = "writing"


LOOP_STAGE = "extraction loop"


TIMED_STAGES = (STARTUP_STAGE, WAITING_STAGE, DECODING_STAGE, NETWORK_STAGE, DETECTION_STAGE, WRITING_STAGE)


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


def feature_settings(config: ExtractionConfig, weights: Path | None, method: str = "d2") -> dict:
    """What a features file records, and must match to be added to or reused: the config and the weights (D2), or
    the method (SIFT, which has no weights)."""
    if method == "sift":
        return {**config.as_dict(), "method": "sift"}
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


def make_extractor(method: str, weights: Path | None, config: ExtractionConfig, device: torch.device):
    """The extractor of a features method, all with one interface (``extract_batch``, ``config``, ``device``):
    "d2" (D2-Net with ``weights``) or "sift" (pycolmap's, on the CPU)."""
    if method == "sift":
        from d2sfm.features.sift import SiftExtractor

        return SiftExtractor(config)
    return D2Extractor(weights, config, device)


def default_loading(device: torch.device) -> tuple[int, int]:
    """(batch size, loader workers) of the commands when the user gives none: on a GPU, batches of up to 4 (fewer
    where they would pass the memory budget: gpu_batching.py) fed by 4 decoding workers keep the network busy; on
    the CPU the network is the bottleneck and batching gains nothing."""
    return (4, 4) if device.type == "cuda" else (1, 1)


SHARED_MEMORY = Path("/dev/shm")  # where a loader worker's images cross to the network loop (tmpfs on Linux)


def largest_network_input_bytes(config: ExtractionConfig) -> int:
    """Bytes of the largest resized BGR image ``config`` lets through (5.9 MB with the defaults): a square photo's,
    since both of the original's resizing rules bound the area most loosely there."""
    height, width = network_input_size(config.max_edge, config.max_edge, config.max_edge, config.max_sum_edges)
    return height * width * 3


def shared_memory_free_bytes(folder: Path = SHARED_MEMORY) -> int | None:
    """Free bytes of the shared-memory file system, or None where there is none to read (not Linux)."""
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


def fit_loader_to_shared_memory(workers: int, prefetch: int, batch_size: int, image_bytes: int,
                                free_bytes: int | None) -> tuple[int, int]:
    """(workers, prefetch factor) whose images in flight fit in half the free shared memory. Each image a worker
    has decoded waits there until the network has used it; a container's /dev/shm (Docker gives 64 MB unless
    told ``--shm-size``) holds ten 1600-px photos, and a full one kills the workers with a bus error. Fewer images
    in flight first, then fewer workers, then decoding in the main thread (workers 0)."""
    if workers == 0 or free_bytes is None:
        return workers, prefetch
    room = free_bytes // 2 // max(1, image_bytes) - batch_size  # images the loader may hold beside the batch
    if room >= workers * prefetch:
        return workers, prefetch
    if room >= workers:
        return workers, room // workers
    return (room, 1) if room >= 1 else (0, prefetch)


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
    prefetch = max(2, batch_size)
    free = shared_memory_free_bytes() if workers else None
    fitted = fit_loader_to_shared_memory(workers, prefetch, batch_size, largest_network_input_bytes(extractor.config),
                                         free)
    if fitted != (workers, prefetch):
        log.warning(f"{SHARED_MEMORY} has {free / 2**20:.0f} MB free: the image loader runs "
                    + (f"{fitted[0]} worker(s) holding {fitted[0] * fitted[1]} images" if fitted[0] else
                       "in the main thread") + f" instead of {workers} holding {workers * prefetch}; give it more "
                    "room for full speed (a container: docker run --shm-size 2g)")
    workers, prefetch = fitted
    loader = DataLoader(
        _PreparedImages(root, pending, extractor.config), batch_size=None, collate_fn=_as_is, num_workers=workers,
        prefetch_factor=prefetch if workers else None, worker_init_fn=end_with_this_process(),
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
                  peak_gpu_bytes: tuple[int, int] | None) -> None:
    """Stage times, throughput and peak memory of this run, as JSON, and one line of it on the terminal.
    ``peak_gpu_bytes``: allocated by tensors and reserved by PyTorch's allocator (MemoryBoundedBatches)."""
    seconds = dict(clock.seconds)
    seconds[DETECTION_STAGE] = max(0.0, seconds.get(NETWORK_AND_DETECTION_STAGE, 0.0) - seconds.get(NETWORK_STAGE, 0.0))
    loop = seconds.get(LOOP_STAGE, 0.0)
    timings = {
        "images": extracted, "device": str(device), "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "images_per_second_in_loop": extracted / loop if loop else None,
        "peak_gpu_memory_mb": peak_gpu_bytes[0] / 2**20 if peak_gpu_bytes is not None else None,
        "peak_gpu_reserved_mb": peak_gpu_bytes[1] / 2**20 if peak_gpu_bytes is not None else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_text_atomic(path, json.dumps(timings, indent=2))
    shown = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items() if k != NETWORK_AND_DETECTION_STAGE)
    log.info(f"timings ({path}): {shown}")
