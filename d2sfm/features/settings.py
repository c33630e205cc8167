"""What extraction can be told, apart from the code that does it: the configuration and the command lines' --help
and option checks import this without torch (2 s of every command's start otherwise)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from d2sfm.errors import D2sfmError

SINGLE_SCALE = (1.0,)
MULTI_SCALE = (0.5, 1.0, 2.0)
# The original D2-Net's pyramid is 0.5, 1, 2; scale s costs about s*s the memory of scale 1, so a 1600-px photo at
# scale 4 already needs tens of GiB, and larger scales only run out of memory.
MAX_SCALE = 4.0
PREPROCESSINGS = ("caffe", "torch")  # input normalisations the D2-Net code supports (lib/utils.py: preprocess_image)
PRECISIONS = ("fp32", "bf16", "fp16")
CONV_IMPLEMENTATIONS = ("exact", "winograd")
# Image decoding processes at most: each holds a torch import and a prefetch queue; more only costs memory.
MAX_LOADER_WORKERS = 64
DEFAULT_GPU_MEMORY_GIB = 6.0  # leaves room under 8 GiB for cuDNN's choices and the allocator's rounding


@dataclass
class ExtractionConfig:
    """Everything that changes the features; stored beside them so a resumed run cannot mix settings."""

    scales: tuple[float, ...] = SINGLE_SCALE
    max_edge: int = 1600
    max_sum_edges: int = 2800
    preprocessing: str = "caffe"
    use_relu: bool = True
    max_keypoints: int = 0  # 0: keep all
    precision: str = "fp32"
    conv: str = "exact"
    geometric_centres: bool = False  # True: correct the original's 2-px-per-level keypoint offset (pyramid.py)

    def __post_init__(self) -> None:
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or any(not 0 < s <= MAX_SCALE for s in self.scales):
            raise D2sfmError(f"scales must be numbers above 0 and at most {MAX_SCALE:g} (scale s costs about s*s the "
                             f"memory of scale 1), got {self.scales}")
        if self.max_keypoints < 0:
            raise D2sfmError(f"max_keypoints must be >= 0 (0 keeps them all), got {self.max_keypoints}")
        if self.preprocessing not in PREPROCESSINGS:
            raise D2sfmError(f"preprocessing must be one of {PREPROCESSINGS}, got {self.preprocessing!r}")
        if self.precision not in PRECISIONS:
            raise D2sfmError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.conv not in CONV_IMPLEMENTATIONS:
            raise D2sfmError(f"conv must be one of {CONV_IMPLEMENTATIONS}, got {self.conv!r}")
        if self.max_edge < 16 or self.max_sum_edges < 32:
            raise D2sfmError("max_edge must be >= 16 and max_sum_edges >= 32")

    @classmethod
    def multiscale(cls, **kwargs) -> ExtractionConfig:
        return cls(scales=MULTI_SCALE, **kwargs)

    def as_dict(self) -> dict:
        return asdict(self)
