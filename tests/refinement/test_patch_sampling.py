"""The image stacks behind patch alignment: the GPU's blur equals OpenCV's, one atlas of several images samples as
grid_sample does on each image alone, and decoded images are cached within their budget."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2sfm.refinement.patch_sampling import (
    AtlasBuffer,
    GrayImages,
    StackGroup,
    downsampling,
    fill_stack,
    fill_stack_torch,
    pyr_down,
    pyr_down_torch,
    residual_sigma,
    stack_groups,
)


def noise(shape, seed):
    return cv2.GaussianBlur(np.random.default_rng(seed).random(shape).astype(np.float32), (0, 0), 1.5)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 2.83, 8.0])
def test_torch_blur_and_derivatives_equal_opencv(sigma):
    gray = noise((70, 90), 0)
    opencv, torch_path = torch.empty((3, 70, 90)), torch.empty((3, 70, 90))
    fill_stack(opencv, gray, sigma)
    fill_stack_torch(torch_path, gray, sigma)
    assert torch.allclose(opencv, torch_path, atol=1e-5)
    assert opencv[1].abs().max() > 1e-3  # derivatives are not trivially zero


def test_atlas_samples_each_image_as_grid_sample_alone():
    """Three images of different sizes in one atlas; points inside, on and beyond every border."""
    shapes = {1: (40, 50), 2: (64, 30), 3: (25, 70)}
    grays = {image_id: noise(shape, image_id) for image_id, shape in shapes.items()}
    images = GrayImages(grays.__getitem__, torch.device("cpu"), 2**20)
    keys = [(1, 1.0), (2, 2.0), (3, 1.0), (1, 2.0)]
    group = StackGroup(keys, images, torch.device("cpu"))
    rng = np.random.default_rng(0)
    which = rng.integers(0, len(keys), 200)
    points = np.empty((200, 9, 2), np.float32)
    for row, key in enumerate(which):
        height, width = shapes[keys[key][0]]
        points[row] = rng.uniform([-5, -5], [width + 5, height + 5], (9, 2))
    points[:4, 0] = [[0.5, 0.5], [0, 0], [1e3, 1e3], [-1e3, 3]]
    samples = group.sampler(which)(torch.from_numpy(points))
    for row, key in enumerate(which):
        image_id, sigma = keys[key]
        height, width = shapes[image_id]
        stack = torch.empty((3, height, width))
        fill_stack(stack, grays[image_id], sigma)
        grid = torch.from_numpy(points[row]) * torch.tensor([2 / width, 2 / height]) - 1
        expected = F.grid_sample(stack[None], grid[None, None], mode="bilinear", padding_mode="border",
                                 align_corners=False)[0, :, 0]
        assert torch.allclose(samples[:, row], expected, atol=1e-5), (row, key)


def test_groups_build_their_atlas_in_one_shared_buffer():
    """Every group is built in the same buffer (no allocation per group: on the CPU, atlases allocated and freed
    one after another fragmented the heap by gigabytes) and samples as a group with its own memory; a group
    larger than the buffer grows it, and the groups after it use the grown one."""
    shapes = {1: (40, 50), 2: (64, 30), 3: (25, 70)}
    grays = {image_id: noise(shape, image_id) for image_id, shape in shapes.items()}
    images = GrayImages(grays.__getitem__, torch.device("cpu"), 2**20)
    storage = AtlasBuffer(3 * 4 * 104 * 70, torch.device("cpu"))  # room for images 1 and 2 side by side: 104 rows
    points = torch.from_numpy(np.random.default_rng(1).uniform(-2, 45, (30, 5, 2)).astype(np.float32))
    for keys in ([(1, 1.0), (2, 2.0)], [(3, 1.0)], [(2, 1.0), (1, 2.0)]):
        shared = StackGroup(keys, images, torch.device("cpu"), storage)
        assert shared.atlas.data_ptr() == storage.buffer.data_ptr()
        which = np.arange(30) % len(keys)
        own = StackGroup(keys, images, torch.device("cpu"))
        assert torch.equal(shared.sampler(which)(points), own.sampler(which)(points))
    first = storage.buffer
    larger = StackGroup([(1, 1.0), (2, 1.0), (3, 1.0)], images, torch.device("cpu"), storage)
    assert storage.buffer is not first and larger.atlas.data_ptr() == storage.buffer.data_ptr()  # grown, once
    assert StackGroup([(3, 1.0)], images, torch.device("cpu"), storage).atlas.data_ptr() == larger.atlas.data_ptr()


def test_decoded_images_are_read_once_within_the_budget():
    reads = []

    def read(image_id):
        reads.append(image_id)
        return np.zeros((10, 10), np.float32)  # 400 bytes

    images = GrayImages(read, torch.device("cpu"), 1000)  # room for two
    for image_id in (1, 2, 1, 2, 3, 1, 3):
        assert images(image_id).shape == (10, 10)
    assert reads == [1, 2, 3, 1] and images.bytes <= 1000
    assert images.shape(2) == (10, 10) and reads == [1, 2, 3, 1]  # a shape seen once is known
    keys = [(1, 1.0), (2, 1.0), (3, 1.0), (3, 2.0)]
    assert list(stack_groups(keys, images, 2 * 3 * 400)) == [[0, 1], [2, 3]]  # two stacks' bytes each
    assert list(stack_groups(keys, images, 2**20, max_height=30)) == [[0, 1, 2], [3]]  # at most 30 rows
    assert list(stack_groups(keys, images, 1)) == [[0], [1], [2], [3]]  # a stack over the budget goes alone


def test_an_atlas_is_counted_at_its_widest_image():
    """One wide image among narrow ones: the atlas is as wide as the widest, and that is what the budget bounds."""
    shapes = {1: (10, 100), 2: (100, 10), 3: (100, 10)}
    images = GrayImages(lambda image_id: np.zeros(shapes[image_id], np.float32), torch.device("cpu"), 2**20)
    keys = [(1, 1.0), (2, 1.0), (3, 1.0)]
    budget = 12 * 110 * 100  # the first two: 110 rows of 100 columns
    groups = list(stack_groups(keys, images, budget))
    assert groups == [[0, 1], [2]]
    for group in groups:
        atlas = StackGroup([keys[i] for i in group], images, torch.device("cpu")).atlas
        assert atlas.numel() * 4 <= budget


@pytest.mark.parametrize("shape", [(70, 90), (33, 51)])
def test_torch_halving_equals_opencv_pyrdown(shape):
    """The GPU's pyramid step equals OpenCV's pyrDown, odd sizes included ((H + 1) // 2 rows)."""
    gray = torch.from_numpy(noise(shape, 2))
    expected = pyr_down(gray)
    assert expected.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    assert torch.allclose(pyr_down_torch(gray), expected, atol=1e-6)


def test_a_stack_blurred_enough_lies_on_a_smaller_image():
    assert [downsampling(sigma) for sigma in (1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0, 16.0)] == [1, 1, 2, 2, 4, 4, 8, 8]
    assert downsampling(8.0, pyramid=False) == 1
    for sigma in (2.0, 2.83, 4.0, 5.66, 8.0):  # what is left to blur at the smaller size is at least 0.8 px
        assert residual_sigma(sigma, downsampling(sigma)) >= 0.8


@pytest.mark.parametrize("sigma", [2.0, 2.83, 4.0, 8.0])
def test_a_pyramid_stack_samples_as_the_full_size_stack(sigma):
    """Sampled at full-size coordinates, the stack built on the downsampled image gives the full-size stack's
    values and derivatives (per full-size pixel), up to the binomial's difference from a Gaussian and bilinear
    interpolation with 0.8-1.4 px of blur left (as at the finest level): within 10% of the values' range and 30% of
    the derivatives' on blurred noise (measured: 3-7% and 8-24%; a stack off by half a pixel or with derivatives
    per downsampled pixel is off by its whole range)."""
    shape = (160, 200)
    images = GrayImages({1: noise(shape, 3)}.__getitem__, torch.device("cpu"), 2**24)
    full = StackGroup([(1, sigma)], images, torch.device("cpu"))
    small = StackGroup([(1, sigma)], images, torch.device("cpu"), pyramid=True)
    assert small.atlas.shape[2] < full.atlas.shape[2]
    margin = 4 * sigma
    points = np.random.default_rng(4).uniform([margin, margin], [shape[1] - margin, shape[0] - margin], (50, 40, 2))
    points = torch.from_numpy(points.astype(np.float32))
    which = np.zeros(50, np.int64)
    expected, got = full.sampler(which)(points), small.sampler(which)(points)
    spread = expected.flatten(1).amax(1) - expected.flatten(1).amin(1)
    error = (got - expected).abs().flatten(1).amax(1)
    assert error[0] < 0.1 * spread[0] and (error[1:] < 0.3 * spread[1:]).all(), (error, spread)
    rows = torch.tensor([3, 7])  # a subset of the rows samples as those rows of the whole
    assert torch.equal(small.sampler(which)(points[rows], rows), got[:, rows])
