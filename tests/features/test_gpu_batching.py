"""Batches of same-size images bounded by GPU memory: the limit learned from one measured call, halving on an
out-of-memory error, an image that does not fit alone left out with a one-line failure, and (on a GPU) the same
features."""

import numpy as np
import pytest
import torch

from d2sfm.errors import D2sfmError
from d2sfm.evaluation.parity import agreement
from d2sfm.features.extraction import PreparedImage, _batches, extract_features
from d2sfm.features.gpu_batching import CLUSTER_ADVICE, GIB, MemoryBoundedBatches, does_not_fit

SHAPE = (120, 160, 3)


def prepared(name, shape=SHAPE):
    return PreparedImage(name, np.zeros(shape, np.uint8), shape[:2], None, 0.0)


def test_batches_ask_the_limit_again_for_every_image():
    """A new size starts with a limit of 1 (measured), then the learned limit applies to the next images."""
    limits = {}
    items = [prepared(f"a{k}") for k in range(5)] + [prepared("b0", (60, 80, 3)), prepared("b1", (60, 80, 3))]
    sizes = []
    for batch, errors in _batches(iter(items), lambda shape: limits.get(shape, 1)):
        assert not errors
        sizes.append((batch[0].image.shape, len(batch)))
        limits[batch[0].image.shape] = 3  # what the first call at this size teaches
    assert sizes == [(SHAPE, 1), (SHAPE, 3), (SHAPE, 1), ((60, 80, 3), 1), ((60, 80, 3), 1)]


def test_the_limit_is_what_the_budget_holds_and_never_above_the_batch_size():
    batches = MemoryBoundedBatches(torch.device("cpu"), most=8, budget_bytes=6 * GIB)
    # 1 GiB allocated before (weights, cache), one image peaked 1.5 GiB above it: (6 - 1) / 1.5 -> 3 images
    assert batches.learn(SHAPE, 1, before_bytes=GIB, peak_bytes=int(2.5 * GIB)) == 3
    assert batches.limit(SHAPE) == 3
    assert batches.learn(SHAPE, 1, before_bytes=GIB, peak_bytes=int(1.1 * GIB)) == 8  # small images: --batch-size
    assert batches.learn(SHAPE, 2, before_bytes=GIB, peak_bytes=9 * GIB) == 1  # too large for the budget: one
    assert batches.limit((1, 1, 3)) == 1  # an unmeasured size starts with one image
    assert MemoryBoundedBatches(torch.device("cpu"), most=4).limit(SHAPE) == 4  # no budget: the batch size


def test_out_of_memory_halves_the_batch_keeps_results_in_order_and_leaves_out_what_never_fits():
    batches = MemoryBoundedBatches(torch.device("cpu"), most=8, budget_bytes=6 * GIB)
    batches.learn(SHAPE, 1, before_bytes=0, peak_bytes=GIB // 2)  # the measurement promised 8 per call
    calls = []

    def extract(items):
        calls.append(len(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test's extract)")
        return [item.name for item in items]

    items = [prepared(f"p{k}") for k in range(8)]
    assert batches.run(SHAPE, items, extract) == [f"p{k}" for k in range(8)]
    assert calls == [8, 4, 2, 2, 2, 2] and batches.limit(SHAPE) == 2

    def never_fits(items):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the test's extract)")

    assert batches.run(SHAPE, items[:3], never_fits) == [None, None, None]  # each left out, the run goes on
    message = does_not_fit("photos/p0.jpg", SHAPE)
    assert message.startswith("photos/p0.jpg: does not fit in the GPU's memory even alone (network input 160x120)")
    assert "--device cpu" in message and "--device" not in does_not_fit("p0", SHAPE, CLUSTER_ADVICE)

    def cudnn_cannot_allocate(items):
        if len(items) > 1:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED (raised by the test's extract)")
        return [item.name for item in items]

    def fails_otherwise(items):
        raise RuntimeError("an error that is not about memory")

    assert batches.run(SHAPE, items[:2], cudnn_cannot_allocate) == ["p0", "p1"]
    # what allocators outside PyTorch's caching one say on a GPU (a library's cudaMalloc, cuDNN 9, cuBLAS)
    for words in ("CUDA error: out of memory", "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
                  "CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"):
        def library_cannot_allocate(items, words=words):
            if len(items) > 1:
                raise RuntimeError(f"{words} (raised by the test's extract)")
            return [item.name for item in items]

        assert batches.run(SHAPE, items[:2], library_cannot_allocate) == ["p0", "p1"], words
    with pytest.raises(RuntimeError, match="not about memory"):
        batches.run(SHAPE, items[:2], fails_otherwise)
    for bad in (0, float("nan")):
        with pytest.raises(D2sfmError, match="--gpu-memory"):
            MemoryBoundedBatches.for_device(torch.device("cpu"), 4, budget_gib=bad)


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the GPU memory budget is tested where one is")
def test_gpu_batches_stay_in_their_budget_and_give_the_same_features(tmp_path, sacre_coeur_images, weights_path):
    """Multi-scale photos in batches of up to 4 under a 1.5 GiB budget: the learned limit keeps the peak near it
    (within 25%: a limit is extrapolated from one image) and the features agree with one image per call as
    closely as the parity criteria ask."""
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.io.h5 import read_features
    from d2sfm.io.images import list_images

    names = list_images(sacre_coeur_images)[:6]
    extractor = D2Extractor(weights_path, ExtractionConfig.multiscale(max_edge=640), "cuda")
    settings = extractor.config.as_dict()
    budget = int(1.5 * GIB)
    torch.cuda.reset_peak_memory_stats()
    bounded = MemoryBoundedBatches(torch.device("cuda"), most=4, budget_bytes=budget)
    extract_features(sacre_coeur_images, names, tmp_path / "bounded.h5", extractor, settings, batch_size=4,
                     workers=0, progress=False, batches=bounded)
    assert bounded.limits and all(1 <= limit <= 4 for limit in bounded.limits.values())
    assert bounded.run_peak_bytes()[0] <= 1.25 * budget  # limits extrapolated from one image: cuDNN may vary a bit
    extract_features(sacre_coeur_images, names, tmp_path / "single.h5", extractor, settings, batch_size=1,
                     workers=0, progress=False, batches=MemoryBoundedBatches(torch.device("cuda"), 1))
    for name in names:
        ours, one_by_one = read_features(tmp_path / "bounded.h5", name), read_features(tmp_path / "single.h5", name)
        result = agreement(ours.keypoints, one_by_one.keypoints)
        assert result.count_difference <= 0.005 and result.ours_within(0.01) >= 0.99, name
