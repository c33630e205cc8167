"""Blurred images and their derivatives for patch alignment, many images sampled by one call.

Why not one ``grid_sample`` per image: patch alignment then ran one small batch per image, scale and blur level
(4,060 Gauss-Newton calls on 250 synthetic views, about 100 keypoints each), and on a GPU each call is dozens of
kernel launches. Here the stacks of a group of images lie one above the other in one atlas and every sampled
point names its own stack, so one call serves the whole group; the group's size is bounded in bytes. (A gather
of the four neighbours by index, tried first, ran 10x slower than grid_sample on the CPU.)

Blurs are OpenCV's on the CPU (15-30x faster there than a convolution in torch) and a separable convolution in
torch on a GPU (same kernel, same reflected border, TF32 off: equal to 1e-6). Decoded images are kept in a cache
bounded in bytes, so an image is read once for its templates and its alignment while the cache holds it.

With ``pyramid``, a stack blurred by 2 px or more is built on the image downsampled by 2 (4, 8 for 4, 8 px):
blurred that much, the full-size image holds no detail that the smaller one lacks, and a stack of a quarter of
the pixels costs a quarter to blur and keeps the samples in cache. On 3072x2048 photos, full-size stacks for every
blur took a third of the refinement's time (benchmarks/refine_cost.py).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from d2sfm.io.keypoints import to_integer_centres
from d2sfm.runtime.device import full_float32_cudnn

MAX_DOWNSAMPLING = 8


def downsampling(sigma: float, pyramid: bool = True) -> int:
    """The factor (1, 2, 4 or 8) by which the image under a stack blurred by ``sigma`` px is downsampled: doubled
    while ``sigma`` is at least twice it, so that at least 0.8 px of blur is left to apply at the smaller size and
    bilinear samples there are as faithful as those of a full-size stack blurred by 1 px."""
    factor = 1
    while pyramid and factor < MAX_DOWNSAMPLING and sigma >= 2 * factor:
        factor *= 2
    return factor


def residual_sigma(sigma: float, factor: int) -> float:
    """The blur, in pixels of the image downsampled by ``factor``, that makes ``sigma`` full-size pixels: each of
    the log2(factor) halvings (OpenCV's pyrDown, a 5-tap binomial of variance 1 px^2 at its input's size) blurs
    already."""
    return math.sqrt(max(sigma ** 2 - (factor ** 2 - 1) / 3, 0.0)) / factor


def downsampled_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    height, width = shape
    while factor > 1:
        height, width, factor = (height + 1) // 2, (width + 1) // 2, factor // 2
    return height, width


BINOMIAL_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16


def pyr_down(gray: torch.Tensor) -> torch.Tensor:
    """``gray`` (H, W) blurred by the 5-tap binomial and halved, pixel 2i of the input becoming pixel i (OpenCV's
    pyrDown: reflect-101 border, (H + 1) // 2 rows): OpenCV on the CPU, a convolution in torch elsewhere."""
    if gray.device.type == "cpu":
        return torch.from_numpy(cv2.pyrDown(gray.numpy()))
    return pyr_down_torch(gray)


def pyr_down_torch(gray: torch.Tensor) -> torch.Tensor:
    """:func:`pyr_down` by convolutions in torch, on any device (the GPU's path; tested against OpenCV's)."""
    kernel = torch.from_numpy(BINOMIAL_KERNEL).to(gray.device)
    return _filter_torch(_filter_torch(gray, kernel, 1), kernel, 0)[::2, ::2].contiguous()


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian for float images: 8 sigma + 1 taps (odd), normalised."""
    size = int(round(sigma * 8 + 1)) | 1
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def _filter_torch(image: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """``image`` (H, W) convolved along ``axis`` (1: x) with an odd ``kernel``, OpenCV's reflect-101 border
    (torch's "reflect"; "replicate" where the image is smaller than the kernel's half width)."""
    half = len(kernel) // 2
    padding = (half, half, 0, 0) if axis == 1 else (0, 0, half, half)
    mode = "reflect" if half < image.shape[axis] else "replicate"
    padded = F.pad(image[None, None], padding, mode=mode)
    weight = kernel.view(1, 1, 1, -1) if axis == 1 else kernel.view(1, 1, -1, 1)
    with full_float32_cudnn():  # TF32 would round to 1e-3
        return F.conv2d(padded, weight)[0, 0]


def _central_difference(image: torch.Tensor, axis: int) -> torch.Tensor:
    """(next - previous) / 2 along ``axis`` (1: x), zero on the first and last pixel as OpenCV's reflect-101
    border gives: plain subtraction, exact in float32 on any device."""
    difference = torch.zeros_like(image)
    if axis == 1:
        difference[:, 1:-1] = (image[:, 2:] - image[:, :-2]) * 0.5
    else:
        difference[1:-1] = (image[2:] - image[:-2]) * 0.5
    return difference


def fill_stack(out: torch.Tensor, gray: np.ndarray | torch.Tensor, sigma: float, scale: float = 1.0) -> None:
    """Write into ``out`` (3, H, W) the image blurred by ``sigma`` and its x and y derivatives (central
    differences) times ``scale`` (1 / the downsampling: derivatives per full-size pixel). On the CPU ``out`` is
    filled in place by OpenCV; elsewhere by convolutions on its device."""
    if out.device.type == "cpu":
        planes = out.numpy()
        source = gray.numpy() if isinstance(gray, torch.Tensor) else gray
        cv2.GaussianBlur(source, (0, 0), sigma, dst=planes[0])
        cv2.Sobel(planes[0], cv2.CV_32F, 1, 0, dst=planes[1], ksize=1, scale=0.5 * scale)
        cv2.Sobel(planes[0], cv2.CV_32F, 0, 1, dst=planes[2], ksize=1, scale=0.5 * scale)
    else:
        fill_stack_torch(out, gray, sigma, scale)


def fill_stack_torch(out: torch.Tensor, gray: np.ndarray | torch.Tensor, sigma: float, scale: float = 1.0) -> None:
    """:func:`fill_stack` by convolutions in torch, on any device (the GPU's path; tested against OpenCV's)."""
    kernel = torch.from_numpy(gaussian_kernel(sigma)).to(out.device)
    gray = torch.as_tensor(gray, device=out.device)
    blurred = _filter_torch(_filter_torch(gray, kernel, 1), kernel, 0)
    out[0] = blurred
    out[1] = _central_difference(blurred, 1) * scale
    out[2] = _central_difference(blurred, 0) * scale


class GrayImages:
    """Decoded grayscale images by id, and their downsampled copies, kept (on the device) in least-recently-used
    order up to ``max_bytes``."""

    def __init__(self, read_gray: Callable[[int], np.ndarray], device: torch.device, max_bytes: int) -> None:
        self.read_gray, self.device, self.max_bytes = read_gray, device, max_bytes
        self.images: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.shapes: dict[int, tuple[int, int]] = {}  # of every image read, so a shape never reads twice
        self.bytes = 0

    def __call__(self, image_id: int, factor: int = 1) -> torch.Tensor:
        """The image, downsampled by ``factor`` (a power of 2) by repeated :func:`pyr_down`."""
        key = (image_id, factor)
        if key in self.images:
            self.images.move_to_end(key)
            return self.images[key]
        if factor == 1:
            image = torch.from_numpy(np.ascontiguousarray(self.read_gray(image_id), dtype=np.float32))
            image = image.to(self.device)
            self.shapes[image_id] = tuple(image.shape)
        else:
            image = pyr_down(self(image_id, factor // 2))
        size = image.numel() * 4
        if size > self.max_bytes:  # never cached: keep what is
            return image
        while self.images and self.bytes + size > self.max_bytes:
            _, evicted = self.images.popitem(last=False)
            self.bytes -= evicted.numel() * 4
        self.images[key] = image
        self.bytes += size
        return image

    def shape(self, image_id: int, factor: int = 1) -> tuple[int, int]:
        if image_id not in self.shapes:
            self(image_id)
        return downsampled_shape(self.shapes[image_id], factor)


class AtlasBuffer:
    """One buffer for every atlas of a run, grown (never shrunk) to the largest atlas asked for. Why: on the CPU,
    atlases of a few tens of MB and varying size, allocated and freed group after group, sit just under glibc's
    mmap threshold and fragment its heap; the process grew by about 1 GB per 10,000 keypoints aligned across 1,000
    views (9 GB in the model refinement of a 1,000-image scene) before the atlases shared one buffer. A stack
    larger than the groups' budget (one 3072x2048 photo: 75 MB) lands in it too, instead of in fresh pages whose
    first touch cost as much as the blur."""

    def __init__(self, max_bytes: int, device: torch.device) -> None:
        self.buffer = torch.empty(max_bytes // 4, dtype=torch.float32, device=device)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = int(np.prod(shape))
        if self.buffer.numel() < size:
            device = self.buffer.device
            self.buffer = torch.empty(0, device=device)  # freed before the larger one is allocated
            self.buffer = torch.empty(size, dtype=torch.float32, device=device)
        return self.buffer[:size].view(shape)


class StackGroup:
    """The stacks (blurred image, d/dx, d/dy) of several (image, blur) keys stacked one above the other in one
    atlas (1, 3, total height, widest width), sampled together by one ``grid_sample``: each sampled point names
    the stack it reads and is clamped to that stack's own borders first, so no sample mixes two stacks. With
    ``pyramid`` a stack blurred by 2 px or more lies at a smaller size (:func:`downsampling`); it is sampled at
    full-size coordinates all the same, and its derivatives are per full-size pixel."""

    def __init__(self, keys: Sequence[tuple[int, float]], images: GrayImages, device: torch.device,
                 storage: AtlasBuffer | None = None, pyramid: bool = False) -> None:
        """``storage``: the buffer to build the atlas in (one for every group of a run), else a new
        allocation."""
        factors = np.array([downsampling(sigma, pyramid) for _, sigma in keys], dtype=np.int64)
        shapes = np.array([images.shape(image_id, factor) for (image_id, _), factor in zip(keys, factors)],
                          dtype=np.int64).reshape(-1, 2)
        tops = np.concatenate([[0], np.cumsum(shapes[:, 0])[:-1]])
        shape = (1, 3, int(shapes[:, 0].sum()), int(shapes[:, 1].max()))
        self.atlas = storage.take(shape) if storage is not None else torch.empty(shape, device=device)
        for (image_id, sigma), factor, (height, width), top in zip(keys, factors, shapes, tops):
            fill_stack(self.atlas[0, :, top:top + height, :width], images(image_id, int(factor)),
                       residual_sigma(sigma, int(factor)), 1.0 / factor)
            # the pixel right of a narrower stack is read with weight 0 (the row below is the next stack, or
            # outside the atlas, which grid_sample skips): it must be finite
            self.atlas[0, :, top:top + height, width:] = 0
        self.tops = torch.from_numpy(tops).float().to(device)
        self.limits = torch.from_numpy(shapes[:, ::-1] - 1).float().to(device)  # last pixel centre (x, y)
        self.factors = torch.from_numpy(factors).float().to(device)

    def sampler(self, which: np.ndarray) -> Callable[..., torch.Tensor]:
        """A function taking points (N, S, 2) (COLMAP convention, full-size pixels) of rows whose stacks are the
        keys ``which`` (N indices into the group's keys) to their bilinear samples (3, N, S), border values
        outside the image (as grid_sample's border padding on each image alone). Its optional second argument
        picks the rows (indices into ``which``) that the points are of."""
        which = torch.from_numpy(np.asarray(which, dtype=np.int64)).to(self.atlas.device)
        limits, tops, factors = self.limits[which, None], self.tops[which, None], self.factors[which, None, None]
        size = torch.tensor([self.atlas.shape[3], self.atlas.shape[2]], dtype=torch.float32,
                            device=self.atlas.device)
        downsampled = bool((factors > 1).any())

        def sample(points: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
            own_limits, own_tops = (limits, tops) if rows is None else (limits[rows], tops[rows])
            centres = to_integer_centres(points)
            if downsampled:  # pyrDown puts pixel 2i at i: centres scale
                centres = centres / (factors if rows is None else factors[rows])
            centres = centres.clamp(min=0).minimum(own_limits)  # in the stack
            atlas_x = centres[..., 0]
            atlas_y = centres[..., 1] + own_tops
            grid = torch.stack([atlas_x, atlas_y], dim=-1).add_(0.5).mul_(2 / size).sub_(1)
            return _grid_sample_parallel(self.atlas, grid)
        return sample


def _grid_sample_parallel(atlas: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (C, N, S) of ``atlas`` (1, C, H, W) at ``grid`` (N, S, 2), border padding. On the CPU
    grid_sample runs one thread per batch item, so the rows are cut into one batch item per thread over the same
    atlas (expanded, not copied): 2x faster on 2 cores, the same values (each sample is computed alone)."""
    parts = min(torch.get_num_threads(), len(grid)) if atlas.device.type == "cpu" else 1
    if parts <= 1:
        return F.grid_sample(atlas, grid[None], mode="bilinear", padding_mode="border", align_corners=False)[0]
    count, samples = grid.shape[:2]
    per_part = -(-count // parts)
    padding = per_part * parts - count
    if padding:
        grid = torch.cat([grid, grid[:1].expand(padding, -1, -1)])
    out = F.grid_sample(atlas.expand(parts, -1, -1, -1), grid.view(parts, per_part, samples, 2), mode="bilinear",
                        padding_mode="border", align_corners=False)  # (parts, C, per_part, S)
    return out.transpose(0, 1).reshape(atlas.shape[1], parts * per_part, samples)[:, :count]


# The atlas's height: float32 coordinates below 8192 px keep steps of 1/2048 px or finer, so a sample is placed
# within about 5e-4 px (an atlas of 580 small views, 139,000 px high, would round to 0.008 px).
MAX_ATLAS_HEIGHT = 8192


def stack_groups(keys: Sequence[tuple[int, float]], images: GrayImages, max_bytes: int,
                 max_height: int = MAX_ATLAS_HEIGHT, pyramid: bool = False) -> Iterator[list[int]]:
    """Indices into ``keys`` cut into consecutive groups whose atlas (total height x widest width x 3 float32)
    takes at most ``max_bytes`` and ``max_height`` rows (a key larger than that alone). A generator: each image
    is read when its group is formed, one group ahead of its use, so with a cache of at least a third of
    ``max_bytes`` (a gray image is a third of its stack) a group's images are still cached when its stacks
    are built."""
    current, rows, widest = [], 0, 0
    for i, (image_id, sigma) in enumerate(keys):
        height, width = images.shape(image_id, downsampling(sigma, pyramid))
        atlas_bytes = 3 * 4 * (rows + height) * max(widest, width)
        if current and (atlas_bytes > max_bytes or rows + height > max_height):
            yield current
            current, rows, widest = [], 0, 0
        current.append(i)
        rows += height
        widest = max(widest, width)
    if current:
        yield current
