"""The D2-Net extractor: image in, keypoints in COLMAP's convention at the original resolution out.

It applies the original ``extract_features.py`` recipe (resize to at most ``max_edge`` and ``max_sum_edges``,
Caffe or torch normalisation, single- or multi-scale pyramid) with a faster implementation of each step, and
batches same-size images on the GPU.

Backbone implementations (``conv``):

* ``exact`` (default): the convolution kernels PyTorch uses for the original code. On the CPU they run through
  oneDNN with pre-packed weights: bitwise the original's feature maps on the same machine (other
  CPUs and GPUs round differently; see parity.py), about 15% faster.
* ``winograd`` (CPU): NNPACK Winograd convolutions for the wide layers, about 2x faster backbone; feature maps
  differ by ~1e-5 relative, which moves decisions that sit on a threshold (about 0.5% of keypoints).
* on CUDA ``exact`` is cuDNN in fp32 with TF32 disabled; ``precision`` bf16/fp16 runs the backbone in autocast.

How the GPU runs it (``GpuTuning``: layouts, compilation, CUDA graphs, pinned input) is kept apart from what it
computes; each choice is measured by ``benchmarks/extract_remedies.py``, and the defaults are what paid there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from d2sfm.errors import D2sfmError
from d2sfm.features.checkpoint import load_model
from d2sfm.features.network import (
    CAFFE_BGR_MEAN,
    TORCH_RGB_MEAN,
    TORCH_RGB_STD,
    onednn_layers,
    winograd_layers,
)
from d2sfm.features.pyramid import PyramidLevel, extract_pyramid
from d2sfm.features.settings import (  # noqa: F401  (where callers have long found them)
    MULTI_SCALE,
    SINGLE_SCALE,
    ExtractionConfig,
)
from d2sfm.io.features import Features  # noqa: F401  (where callers have long found it)
from d2sfm.io.keypoints import network_ij_to_colmap_xy
from d2sfm.runtime.device import full_float32_cudnn
from d2sfm.runtime.stage_clock import StageClock, timed

COMPILE_MODES = ("off", "default", "reduce-overhead")  # torch.compile modes; reduce-overhead adds CUDA graphs
MAP_LAYOUTS = ("contiguous", "channels_last")
DESCRIPTOR_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
NETWORK_STAGE = "network"  # the backbone's time, under an extractor's clock


@dataclass(frozen=True)
class GpuTuning:
    """How the network runs on a CUDA GPU; ignored on the CPU. In fp32 none of these changes what is computed
    beyond rounding; ``working_precision_maps`` changes bf16/fp16 keypoints the way the precision itself does."""

    maps_layout: str = "contiguous"  # channels_last: detection reads the backbone's NHWC maps without a copy
    working_precision_maps: bool = False  # bf16/fp16: the pyramid's upsample-and-add and detection read bf16 maps
    compile: str = "off"  # torch.compile the backbone (fuses bias and ReLU into kernels); reduce-overhead: CUDA graphs
    pinned_input: bool = False  # images reach the GPU from page-locked memory, asynchronously
    cudnn_benchmark: bool = False  # cuDNN times its algorithms at each new input size and keeps the fastest

    def __post_init__(self) -> None:
        if self.maps_layout not in MAP_LAYOUTS:
            raise D2sfmError(f"maps_layout must be one of {MAP_LAYOUTS}, got {self.maps_layout!r}")
        if self.compile not in COMPILE_MODES:
            raise D2sfmError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")


COMPILED_SHAPES = 64  # input shapes a compiled backbone keeps (torch's default, 8, is three multi-scale sizes)


def compiled(backbone: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile`` for fixed shapes: each (batch, height, width) compiles once, so it pays only where few
    sizes recur (a collection of photos from one camera), never on a collection of many sizes."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), COMPILED_SHAPES))
    return torch.compile(backbone, dynamic=False, mode=None if mode == "default" else mode)


def network_input_size(height: int, width: int, max_edge: int, max_sum_edges: int) -> tuple[int, int]:
    """The original's two resizing rules, applied in turn, each flooring the new size like ``imresize``."""
    if max(height, width) > max_edge:
        factor = max_edge / max(height, width)
        height, width = int(height * factor), int(width * factor)
    if height + width > max_sum_edges:
        factor = max_sum_edges / (height + width)
        height, width = int(height * factor), int(width * factor)
    return height, width


def resize_for_network(image_bgr: np.ndarray, max_edge: int, max_sum_edges: int) -> np.ndarray:
    """Resize with PIL's bilinear filter like the original's ``scipy.misc.imresize``, but once from the original
    image (the original resamples twice when both rules apply, and its second pass rescales the contrast)."""
    height, width = image_bgr.shape[:2]
    new_height, new_width = network_input_size(height, width, max_edge, max_sum_edges)
    if (new_height, new_width) == (height, width):
        return image_bgr
    resized = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1])).resize(
        (new_width, new_height), resample=Image.BILINEAR
    )
    return np.asarray(resized)[:, :, ::-1]


def normalise(images_bgr: torch.Tensor, preprocessing: str) -> torch.Tensor:
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) float32 network input."""
    x = images_bgr.permute(0, 3, 1, 2).float()
    if preprocessing == "caffe":
        return x - torch.tensor(CAFFE_BGR_MEAN, device=x.device).view(1, 3, 1, 1)
    rgb = x.flip(1) / 255.0
    mean = torch.tensor(TORCH_RGB_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(TORCH_RGB_STD, device=x.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


class D2Extractor:
    """Holds the network on a device; ``extract`` / ``extract_batch`` turn BGR images into Features."""

    def __init__(self, weights: str | os.PathLike, config: ExtractionConfig | None = None,
                 device: str | torch.device = "cpu", tuning: GpuTuning | None = None) -> None:
        self.config = config or ExtractionConfig()
        self.device = torch.device(device)
        self.tuning = tuning or GpuTuning()
        model = load_model(weights, use_relu=self.config.use_relu)
        layers = model.test_time_layers().to(self.device)
        if self.device.type == "cpu" and self.config.precision != "fp32":
            raise D2sfmError(f"precision {self.config.precision} is for CUDA GPUs; use --precision fp32 on the CPU")
        if self.config.conv == "winograd":
            if self.device.type != "cpu":
                raise D2sfmError("--conv winograd is a CPU implementation; on a GPU use --conv exact")
            try:
                self.backbone = winograd_layers(layers)
            except RuntimeError as error:
                raise D2sfmError(f"--conv winograd is unavailable ({error}); use --conv exact") from None
        elif self.device.type == "cpu":
            self.backbone = onednn_layers(layers)
        else:
            self.backbone = layers.to(memory_format=torch.channels_last)
            if self.tuning.compile != "off":
                self.backbone = compiled(self.backbone, self.tuning.compile)
        self.clock: StageClock | None = None  # set to time the backbone ("network") apart from detection

    def _timed_backbone(self, images: torch.Tensor) -> torch.Tensor:
        with timed(self.clock, NETWORK_STAGE):
            return self.run_backbone(images)

    def run_backbone(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return self.backbone(images)
        images = images.contiguous(memory_format=torch.channels_last)
        if self.tuning.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with full_float32_cudnn(benchmark=True if self.tuning.cudnn_benchmark else None):
            if self.config.precision == "fp32":
                output = self.backbone(images)
                maps = output
            else:
                dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    output = self.backbone(images)
                maps = output if self.tuning.working_precision_maps else output.float()
        if self.tuning.maps_layout == "contiguous":
            maps = maps.contiguous()
        if maps is output and self.tuning.compile == "reduce-overhead":
            maps = maps.clone()  # a CUDA graph's output is overwritten by its next replay
        return maps

    def prepare(self, image_bgr: np.ndarray) -> np.ndarray:
        """The CPU part of the work (loader workers call ``resize_for_network`` directly)."""
        return resize_for_network(image_bgr, self.config.max_edge, self.config.max_sum_edges)

    @torch.inference_mode()
    def extract_batch(self, resized: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]],
                      on_level: Callable[[PyramidLevel], None] | None = None,
                      descriptor_dtype=np.float32) -> list[Features]:
        """Extract from prepared images that share one size; ``original_sizes`` are (height, width) before resizing.
        ``on_level`` sees each pyramid level's fused map and detections (``parity`` explains keypoints with them).
        ``descriptor_dtype`` float16 converts the descriptors where they are computed, as the file stores them:
        on the GPU it halves the transfer, on the CPU PyTorch's conversion is ~5x numpy's (same values)."""
        shapes = {image.shape for image in resized}
        if len(shapes) != 1:
            raise ValueError(f"a batch must hold images of one size, got {sorted(shapes)}")
        pixels = torch.from_numpy(np.stack(resized))
        if self.tuning.pinned_input and self.device.type == "cuda":
            pixels = pixels.pin_memory()
        pixels = pixels.to(self.device, non_blocking=True)
        inputs = normalise(pixels, self.config.preprocessing)
        context = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with context:
            raw = extract_pyramid(self._timed_backbone, inputs, self.config.scales,
                                  geometric_centres=self.config.geometric_centres, on_level=on_level)
        height, width = resized[0].shape[:2]
        dtype = DESCRIPTOR_DTYPES[np.dtype(descriptor_dtype)]
        return [self._to_features(r, height, width, size, dtype) for r, size in zip(raw, original_sizes)]

    def extract(self, image_bgr: np.ndarray, on_level: Callable[[PyramidLevel], None] | None = None,
                descriptor_dtype=np.float32) -> Features:
        return self.extract_batch([self.prepare(image_bgr)], [image_bgr.shape[:2]], on_level, descriptor_dtype)[0]

    def _to_features(self, raw, height: int, width: int, original_size: tuple[int, int],
                     descriptor_dtype: torch.dtype) -> Features:
        scores = raw.scores
        order = None
        if self.config.max_keypoints and len(scores) > self.config.max_keypoints:
            order = torch.topk(scores, self.config.max_keypoints, sorted=False).indices.sort().values
        pick = (lambda t: t[order]) if order is not None else (lambda t: t)
        ijs = pick(raw.keypoints_ijs).cpu().numpy()
        factor_i, factor_j = original_size[0] / height, original_size[1] / width
        return Features(
            keypoints=network_ij_to_colmap_xy(ijs[:, :2], factor_i, factor_j).astype(np.float32),
            scales=(ijs[:, 2] * (factor_i + factor_j) / 2).astype(np.float32),
            scores=pick(scores).cpu().numpy().astype(np.float32),
            descriptors=pick(raw.descriptors).to(descriptor_dtype).cpu().numpy(),
            image_size=(int(original_size[1]), int(original_size[0])),
            global_descriptor=raw.global_descriptor.cpu().numpy().astype(np.float32),
        )
