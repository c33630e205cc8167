"""The extraction loader: photos decoded and resized in worker processes reach the network loop unchanged, as
numpy arrays, whether handed over through shared memory (a worker) or not (no worker); bad files as errors."""

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from d2sfm.features.extraction import (
    _as_is,
    _PreparedImages,
    fit_loader_to_shared_memory,
    largest_network_input_bytes,
    shared_memory_free_bytes,
)
from d2sfm.features.extractor import ExtractionConfig, resize_for_network
from d2sfm.io.images import read_image_bgr


@pytest.mark.parametrize("workers", [0, 1])
def test_photos_cross_from_the_workers_unchanged(tmp_path, workers):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), rng.integers(0, 256, (300, 200), dtype=np.uint8))  # gray, resized
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    config = ExtractionConfig(max_edge=160)
    loader = DataLoader(_PreparedImages(tmp_path, ["a.png", "b.png", "c.jpg"], config), batch_size=None,
                        collate_fn=_as_is, num_workers=workers)
    items = {item.name: item for item in loader}
    for name in ("a.png", "b.png"):
        expected = resize_for_network(read_image_bgr(tmp_path / name), config.max_edge, config.max_sum_edges)
        assert isinstance(items[name].image, np.ndarray) and np.array_equal(items[name].image, expected), name
    assert items["b.png"].image.shape == (160, 106, 3) and items["b.png"].original_size == (300, 200)
    assert items["c.jpg"].image is None and "cannot be decoded" in items["c.jpg"].error
    copy = pickle.loads(pickle.dumps(items["a.png"]))
    assert np.array_equal(copy.image, items["a.png"].image) and copy.name == "a.png"


def test_the_loader_fits_its_images_in_flight_to_the_free_shared_memory():
    """A container's /dev/shm (Docker's default is 64 MB) holds ten 1600-px photos: the GPU defaults (4 workers,
    4 images each, batches of 4) would fill it and kill the workers with a bus error."""
    photo = largest_network_input_bytes(ExtractionConfig())
    assert photo == 1400 * 1400 * 3  # max_edge 1600 and max_sum_edges 2800: the square is the largest
    assert largest_network_input_bytes(ExtractionConfig(max_edge=640)) == 640 * 640 * 3
    mb = 2**20
    assert fit_loader_to_shared_memory(4, 4, 4, photo, 16 * 1024 * mb) == (4, 4)  # a host's /dev/shm: unchanged
    assert fit_loader_to_shared_memory(4, 4, 4, photo, None) == (4, 4)  # nothing to read (not Linux)
    assert fit_loader_to_shared_memory(0, 2, 1, photo, 1 * mb) == (0, 2)  # no workers, nothing in flight
    for free_mb in (64, 128, 200, 400):
        workers, prefetch = fit_loader_to_shared_memory(4, 4, 4, photo, free_mb * mb)
        held = (workers * prefetch + 4) * photo if workers else 0
        assert held <= free_mb * mb / 2, free_mb
        assert workers <= 4 and prefetch <= 4
    assert fit_loader_to_shared_memory(4, 4, 4, photo, 200 * mb) == (4, 3)  # fewer images per worker first
    assert fit_loader_to_shared_memory(4, 4, 4, photo, 128 * mb) == (4, 1)
    assert fit_loader_to_shared_memory(4, 4, 4, photo, 64 * mb) == (1, 1)  # then fewer workers
    assert fit_loader_to_shared_memory(4, 4, 4, photo, 40 * mb) == (0, 4)  # then the main thread
    assert shared_memory_free_bytes(Path("/no/such/folder")) is None
