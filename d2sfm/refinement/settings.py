"""What keypoint refinement can be told, apart from the code that does it: the configuration imports this without
pycolmap, so extraction and matching run on machines that have none (a GPU box, a cluster worker), and without
torch, so the command lines answer --help and refuse a bad option at once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METHODS = ("patch", "featuremetric")


@dataclass
class AlignmentSettings:
    radius: int = 10  # patch of (2 radius + 1)^2 samples, one pixel apart in the finer of the two views
    blur_sigmas: tuple[float, ...] = (2.0, 1.0)  # coarse to fine: a wider basin, then the precise optimum
    # A pyramid, as KLT trackers do: a level blurred k times more than the finest samples the same window every
    # k pixels (11x11 samples instead of 21x21 at the coarse level) from a stack built on the image downsampled
    # (patch_sampling.downsampling). The coarse level only brings the keypoint into the finest level's basin;
    # the fit that is kept and gated is the finest level's, sampled at full size as before. False: every level at
    # full size with all samples (the baseline of benchmarks/refine_cost.py).
    pyramid: bool = True
    iterations: int = 12  # per level, at most
    # A keypoint stops iterating at a level once a step would move it, or any sample of its patch, by less than
    # this many pixels (on Herz-Jesus-P8 this moved the refined keypoints by a median 0.002 px against iterating
    # on). None: every keypoint takes every iteration.
    converged_px: float | None = 0.01
    # A fit correlating less than this at a coarser level is not taken to the finer ones: it ends far below
    # min_correlation (the finer level sees more detail, so it correlates less). Most are model refinement's
    # completion candidates where the point is hidden. None: every keypoint goes through every level.
    min_coarse_correlation: float | None = 0.5
    # The same within a level: a fit still correlating less than min_coarse_correlation after this many
    # iterations stops there (it is judged, and fails, like the others). None (the default): off. The model
    # refinement sets 3: most of its hopeless fits are completion candidates where the point is hidden (on
    # entry-P10 two thirds of its 39,000 candidates fail the gates). Before mapping every fit is a verified match
    # that may start a few pixels off and recover after the third iteration: giving up there aligned 5% fewer
    # keypoints, and over two or three mapping seeds per scene the poses were 0.1-0.3 mm worse on entry-P10 and
    # Herz-Jesus-P8, for 2 s less on fountain-P11 (docs/benchmarks.md).
    give_up_after: int | None = None
    max_shift: float = 8.0  # px in the keypoint's image; beyond it the keypoint stays where it was
    # A fit is trusted where it correlates and its position is certain: the standard deviation of the fitted
    # centre along its weakest direction (from the residual and the Gauss-Newton Hessian) at most
    # max_uncertainty px. Correlation alone lets through fits that slide along an edge or land on another
    # optimum: on synthetic views with known truth, fits above 0.2 px end more than 2 px from the true point in
    # 3 cases of 4 (docs/benchmarks.md, "Which fits are trusted"). None: no uncertainty gate.
    min_correlation: float = 0.9  # weighted normalised cross-correlation of the final fit
    max_uncertainty: float | None = 0.15
    max_nodes: int = 50_000  # keypoints aligned per chunk: bounds the templates' memory (50k: 180 MB)
    # Batches and the cache of decoded images: None picks by device. A CPU is fastest on cache-sized work (512
    # keypoints per Gauss-Newton batch, 32 MiB of image stacks per group); a GPU on few, large launches (8,192
    # keypoints: 115 MB of Jacobians, 512 MiB of stacks). Both keep 512 MiB of decoded images (twenty 3072x2048
    # photos): with 128 MiB on the CPU, the passes over 11 such photos decoded each one 5-6 times, 10% of the
    # refinement's time (benchmarks/refine_cost.py).
    max_rows: int | None = None
    max_stack_bytes: int | None = None
    max_image_bytes: int | None = None
    max_track_size: int = 256  # larger tracks are chains merged through wrong matches, not one point: left alone

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def batches(self, device: torch.device | str) -> tuple[int, int, int]:
        """Keypoints per Gauss-Newton batch, bytes of image stacks per group and bytes of decoded images kept
        on ``device``."""
        gpu = str(device).split(":")[0] != "cpu"
        return (self.max_rows or (8_192 if gpu else 512), self.max_stack_bytes or (512 if gpu else 32) * 2**20,
                self.max_image_bytes or 512 * 2**20)


@dataclass
class PatchSettings:
    layer: str = "conv2_2"
    size: int = 8  # patch side in feature pixels; displacements stay within it
    max_edge: int = 1600
    max_sum_edges: int = 2800
    preprocessing: str = "caffe"

    def as_dict(self) -> dict:
        return {"layer": self.layer, "size": self.size, "max_edge": self.max_edge,
                "max_sum_edges": self.max_sum_edges, "preprocessing": self.preprocessing}


@dataclass
class AdjustmentSettings:
    iterations: int = 25
    robust_scale: float = 0.25  # Cauchy scale on the feature distance (features are unit vectors)
    initial_damping: float = 1e-3


@dataclass
class RefineSettings:
    method: str = "patch"
    alignment: AlignmentSettings = field(default_factory=AlignmentSettings)  # method "patch"
    patches: PatchSettings = field(default_factory=PatchSettings)  # method "featuremetric"
    adjustment: AdjustmentSettings = field(default_factory=AdjustmentSettings)

    def as_dict(self) -> dict:
        if self.method == "patch":
            return {"method": self.method, **self.alignment.as_dict()}
        return {"method": self.method, **self.patches.as_dict(), **asdict(self.adjustment)}
