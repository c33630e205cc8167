"""The extraction loader: photos decoded and resized in worker processes reach the network loop unchanged, as
numpy arrays, whether handed over through shared memory (a worker) or not (no worker); bad files as errors."""

import pickle

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from d2sfm.features.extraction import _as_is, _PreparedImages
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
