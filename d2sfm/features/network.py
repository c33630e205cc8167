"""D2-Net's network: VGG16 conv1_1 .. conv4_3, in a test-time and a training variant that share one set of weights.

The parameter names follow the official checkpoints (``dense_feature_extraction.model.<index>.weight``) so that
``d2_ots.pth`` / ``d2_tf.pth`` load unchanged and our own checkpoints load in the original code.

* Training variant (paper section 3.4): plain VGG16 up to conv4_3, output stride 8.
* Test-time variant (paper section 4, ``lib/model_test.py``): pool3 becomes a 2x2 average pooling with stride 1 and
  conv4_x use dilation 2, so the output stride is 4 with the same receptive field; an optional final ReLU.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# (kind, in_channels, out_channels) of torchvision's vgg16().features[:23], conv1_1 .. conv4_3.
_VGG16_TO_CONV4_3 = [
    ("conv", 3, 64), ("relu",), ("conv", 64, 64), ("relu",), ("pool",),
    ("conv", 64, 128), ("relu",), ("conv", 128, 128), ("relu",), ("pool",),
    ("conv", 128, 256), ("relu",), ("conv", 256, 256), ("relu",), ("conv", 256, 256), ("relu",), ("pool",),
    ("conv", 256, 512), ("relu",), ("conv", 512, 512), ("relu",), ("conv", 512, 512),
]
POOL3_INDEX = 16
CONV4_INDICES = (17, 19, 21)
CONV4_3_INDEX = 21
NUM_CHANNELS = 512

# Input normalisations the D2-Net code supports (lib/utils.py: preprocess_image).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)


def _build_vgg_layers() -> nn.Sequential:
    layers: list[nn.Module] = []
    for spec in _VGG16_TO_CONV4_3:
        if spec[0] == "conv":
            layers.append(nn.Conv2d(spec[1], spec[2], kernel_size=3, padding=1))
        elif spec[0] == "relu":
            layers.append(nn.ReLU(inplace=True))
        else:
            layers.append(nn.MaxPool2d(2, stride=2))
    return nn.Sequential(*layers)


class DenseFeatureExtraction(nn.Module):
    """Holds the VGG layers under the attribute name the official checkpoints use (``model``)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _build_vgg_layers()


class D2Net(nn.Module):
    """The D2-Net network. ``forward`` is the training variant; ``forward_test`` the test-time variant.

    Both read the same parameters, so weights trained with one are used by the other without conversion.
    """

    def __init__(self, use_relu: bool = True, trainable_layers: int = 1) -> None:
        super().__init__()
        self.dense_feature_extraction = DenseFeatureExtraction()
        self.use_relu = use_relu
        self.set_trainable_layers(trainable_layers)

    @property
    def layers(self) -> nn.Sequential:
        return self.dense_feature_extraction.model

    def set_trainable_layers(self, count: int) -> None:
        """Unfreeze the last ``count`` conv layers (1 = conv4_3 only, as in the paper); freeze the rest."""
        convs = [m for m in self.layers if isinstance(m, nn.Conv2d)]
        if not 0 <= count <= len(convs):
            raise ValueError(f"trainable_layers must be in [0, {len(convs)}], got {count}")
        for index, conv in enumerate(convs):
            trainable = index >= len(convs) - count
            for parameter in conv.parameters():
                parameter.requires_grad = trainable

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training variant: VGG16 to conv4_3, output stride 8, no final ReLU (soft detection applies its own)."""
        return self.layers(images)

    def forward_test(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time variant, differentiable and sharing this module's parameters (output stride 4)."""
        x = images
        for index, layer in enumerate(self.layers):
            if index == POOL3_INDEX:
                x = F.avg_pool2d(x, 2, stride=1)
            elif index in CONV4_INDICES:
                x = F.conv2d(x, layer.weight, layer.bias, padding=2, dilation=2)
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            else:
                x = layer(x)
        return F.relu(x) if self.use_relu else x

    def test_time_layers(self) -> nn.Sequential:
        """A frozen copy of the test-time variant as plain modules, the exact layer sequence of the original
        ``model_test.py``; used for fast inference (oneDNN packing, channels-last, device placement)."""
        layers: list[nn.Module] = []
        for index, layer in enumerate(self.layers):
            if index == POOL3_INDEX:
                layers.append(nn.AvgPool2d(2, stride=1))
            elif index in CONV4_INDICES:
                dilated = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=2, dilation=2)
                dilated.load_state_dict(layer.state_dict())
                layers.append(dilated)
            else:
                layers.append(copy.deepcopy(layer))
        if self.use_relu:
            layers.append(nn.ReLU(inplace=True))
        sequence = nn.Sequential(*layers).eval()
        for parameter in sequence.parameters():
            parameter.requires_grad = False
        return sequence


def backbone_gflop(height: int, width: int) -> float:
    """Convolution arithmetic of the test-time network on one H x W input, in GFLOP (a multiply-add is 2).

    It is the work any exact implementation has to do whatever its kernels; the benchmarks divide it by the
    machine's measured matrix-product rate to bound how fast such an implementation can be."""
    flops = 0
    for index, spec in enumerate(_VGG16_TO_CONV4_3):
        if spec[0] == "conv":
            flops += 2 * spec[1] * spec[2] * 9 * height * width  # padding 1 (2 when dilated) keeps the size
        elif spec[0] == "pool" and index == POOL3_INDEX:
            height, width = height - 1, width - 1  # 2x2 average pooling with stride 1
        elif spec[0] == "pool":
            height, width = height // 2, width // 2
    return flops / 1e9


def onednn_layers(layers: nn.Sequential) -> nn.Module:
    """Convert test-time layers to oneDNN's blocked layout with pre-packed weights.

    On the CPU this runs the very kernels PyTorch picks for the original code, so outputs are bitwise those of the
    original on the same machine, while skipping the layout reorders around every convolution (about 15% faster).
    Returns a module that takes and returns ordinary dense tensors; falls back to the layers unchanged where oneDNN
    is unavailable.
    """
    if not torch.backends.mkldnn.is_available():
        return layers
    from torch.utils import mkldnn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = mkldnn.to_mkldnn(copy.deepcopy(layers))
    return _OneDnnWrapper(packed, layers)


# PyTorch runs a single small image (at most this many input values) through its native convolution instead of
# oneDNN (ATen's ConvParams::use_mkldnn); such inputs take the plain layers so results stay bitwise the same.
_NATIVE_CONV_MAX_NUMEL = 20480


class _OneDnnWrapper(nn.Module):
    def __init__(self, packed: nn.Module, plain: nn.Module) -> None:
        super().__init__()
        self.packed = packed
        self.plain = plain

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 1 and images.numel() <= _NATIVE_CONV_MAX_NUMEL:
            return self.plain(images)
        return self.packed(images.contiguous().to_mkldnn()).to_dense()


class _WinogradConv(nn.Module):
    """3x3 convolution by NNPACK's Winograd transform: about 3x fewer multiplications than the direct algorithm
    on the wide layers, at a relative error near 1e-5 instead of 1e-6. Dilation 2 is computed by splitting the
    map into its four polyphase sub-grids, each an ordinary convolution."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.dilation = conv.dilation[0]

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            torch._nnpack_spatial_convolution(image[None].contiguous(), self.weight, self.bias, [1, 1])
            for image in x
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dilation == 1:
            return self._conv(x)
        batch, channels, height, width = x.shape
        # Zero rows/columns appended to make the size even are what the convolution's own zero padding would read.
        x = F.pad(x, (0, width % 2, 0, height % 2))
        half_h, half_w = x.shape[2] // 2, x.shape[3] // 2
        phases = x.view(batch, channels, half_h, 2, half_w, 2).permute(0, 3, 5, 1, 2, 4)
        phases = phases.reshape(batch * 4, channels, half_h, half_w)
        # NNPACK's fast inference path is for one image at a time; batches take its much slower training path.
        out = self._conv(phases)
        out_channels = out.shape[1]
        out = out.view(batch, 2, 2, out_channels, half_h, half_w).permute(0, 3, 4, 1, 5, 2)
        return out.reshape(batch, out_channels, 2 * half_h, 2 * half_w)[:, :, :height, :width]


def winograd_layers(layers: nn.Sequential, min_in_channels: int = 128) -> nn.Module:
    """Replace the wide 3x3 convolutions by NNPACK Winograd ones (CPU only); the first layers, where Winograd is
    not faster, run on oneDNN. Raises RuntimeError where this torch has no NNPACK."""
    if not torch._nnpack_available():  # also initialises NNPACK, which must happen before its first call
        raise RuntimeError("this PyTorch build has no NNPACK")
    first_wide = next(i for i, layer in enumerate(layers)
                      if isinstance(layer, nn.Conv2d) and layer.in_channels >= min_in_channels)
    head = onednn_layers(nn.Sequential(*list(layers)[:first_wide]))
    tail = [
        _WinogradConv(layer) if isinstance(layer, nn.Conv2d) else copy.deepcopy(layer)
        for layer in list(layers)[first_wide:]
    ]
    return nn.Sequential(head, *tail).eval()
