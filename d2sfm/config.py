"""What every stage can be told, as dataclasses with defaults (one comment per field), and the named presets.

The command lines build these from their options and call the API with them; a Python user builds them directly
or starts from a preset: ``d2sfm.preset("d2-ss", dense=DenseConfig(enabled=True))``. The defaults are those of
``python -m d2sfm.reconstruct``. Nested sections (``features``, ``pairs``...) are composed rather than flattened,
as pixel-perfect-sfm composes its defaults, so that one section can be replaced or shared between pipelines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from d2sfm.bounds import check_choice, check_numbers
from d2sfm.cluster.ray_backend import MAX_RAY_WORKERS
from d2sfm.errors import D2sfmError
from d2sfm.features.settings import (
    DEFAULT_GPU_MEMORY_GIB,
    MAX_LOADER_WORKERS,
    MULTI_SCALE,
    SINGLE_SCALE,
    ExtractionConfig,
)
from d2sfm.refinement.settings import METHODS as REFINE_METHODS
from d2sfm.refinement.settings import RefineSettings
from d2sfm.sfm.defaults import (
    CAMERA_MODELS,
    CAMERA_MODES,
    D2_ABS_POSE_MIN_INLIER_RATIO,
    D2_ABS_POSE_MIN_INLIERS,
    D2_INIT_MIN_TRI_ANGLE,
    DEFAULT_MESH_TRIM,
    INTRINSICS_REFINEMENTS,
    MAPPERS,
)

FEATURE_METHODS = ("d2", "sift")
IMAGES_PAIRS = ("auto", "exhaustive", "retrieval")


@dataclass(frozen=True)
class FeatureConfig:
    """How keypoints and descriptors are computed; everything but ``weights`` and the storage is recorded in
    features.h5, so that a rerun with other settings cannot mix them."""

    method: str = "d2"  # "d2": D2-Net; "sift": pycolmap's SIFT (the classical baseline), into the same files
    scales: tuple[float, ...] = MULTI_SCALE  # D2 pyramid, coarse to fine; (1.0,) is single-scale D2
    geometric_centres: bool = True  # keypoints at their cells' true centres (False: the original's 2-px offsets)
    max_edge: int = 1600  # the network sees the image with its longer side at most this (keypoints: full size)
    max_sum_edges: int = 2800  # ... and width + height at most this
    max_keypoints: int = 0  # keep the N highest-scoring keypoints per image; 0 keeps them all
    preprocessing: str = "caffe"  # input normalisation the weights were trained with (caffe: every official file)
    use_relu: bool = True  # ReLU after conv4_3, as the original extracts
    conv: str = "exact"  # backbone convolutions: "exact" (the original's) or "winograd" (CPU, ~2x, coarser rounding)
    precision: str = "fp32"  # backbone arithmetic on a GPU: "fp32", "bf16" or "fp16"
    weights: str | None = None  # checkpoint path or official name (d2_tf...); None: $D2SFM_WEIGHTS, else d2_tf
    float32_descriptors: bool = False  # store descriptors as float32 (default float16: half the disk)

    def __post_init__(self) -> None:
        if self.method not in FEATURE_METHODS:
            raise D2sfmError(f"features method must be one of {', '.join(FEATURE_METHODS)}, not {self.method!r}")
        object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        self.extraction()  # the network's settings are checked there, as every extractor gets them

    def extraction(self) -> ExtractionConfig:
        """The network's settings (validated there), as features.h5 records them."""
        return ExtractionConfig(scales=self.scales, max_edge=self.max_edge, max_sum_edges=self.max_sum_edges,
                                preprocessing=self.preprocessing, use_relu=self.use_relu,
                                max_keypoints=self.max_keypoints, precision=self.precision, conv=self.conv,
                                geometric_centres=self.geometric_centres)


@dataclass(frozen=True)
class PairsConfig:
    """Which images are matched with which."""

    method: str = "auto"  # "exhaustive", "sequential", "retrieval", a pair-list file, or "auto" (exhaustive up to
    # 100 images, else retrieval)
    top_k: int = 20  # retrieval: pairs per image
    overlap: int = 10  # sequential: each image with the next N

    def __post_init__(self) -> None:
        check_numbers(self, top_k={"at_least": 1}, overlap={"at_least": 1})


@dataclass(frozen=True)
class MatchConfig:
    """Mutual nearest neighbours of the descriptors, optionally filtered."""

    min_similarity: float | None = None  # drop matches below this cosine similarity (e.g. 0.8); None: off
    ratio: float | None = None  # Lowe's ratio test on descriptor distances (e.g. 0.9); None: off

    def __post_init__(self) -> None:
        check_numbers(self, min_similarity={"at_least": -1, "at_most": 1, "optional": True},
                      ratio={"above": 0, "at_most": 1, "optional": True})


@dataclass(frozen=True)
class RefineConfig:
    """Keypoint refinement on dense D2 features: tracks before mapping, each 3D point's observations after."""

    enabled: bool = True  # False maps the raw detections, as the original D2-Net pipeline did
    method: str = "patch"  # "patch": affine patch alignment; "featuremetric": early VGG features (Lindenberger)
    # off by default: it cost half the model stage and lowered the accuracy against ground truth on 2 of the 3
    # Strecha scenes (ModelRefineSettings.complete_tracks)
    complete_tracks: bool = False  # after mapping, also add each point where its patch is found in other images

    def __post_init__(self) -> None:
        check_choice(self, "method", REFINE_METHODS)

    def settings(self) -> RefineSettings:
        return RefineSettings(method=self.method)


@dataclass(frozen=True)
class MappingConfig:
    """The COLMAP database's cameras and pycolmap's mapper."""

    camera_mode: str | None = None  # "auto", "single", "per-image", "per-folder"; None: auto (single for the demo)
    camera_model: str = "SIMPLE_RADIAL"  # COLMAP camera model of every camera
    camera_params: str = ""  # known intrinsics in the model's COLMAP order ("fx,fy,cx,cy" for PINHOLE); "": guessed
    refine_intrinsics: str = "colmap"  # "none", "focal", "all"; "colmap": focal and distortion, principal point held
    mapper: str = "incremental"  # "incremental" (COLMAP's) or "global" (rotation and translation averaging)
    known_poses: str = ""  # true cameras (Strecha .camera files or a COLMAP model): triangulate at them, no mapping
    abs_pose_min_inliers: int = D2_ABS_POSE_MIN_INLIERS  # 2D-3D inliers to register an image (COLMAP: 30)
    abs_pose_min_inlier_ratio: float = D2_ABS_POSE_MIN_INLIER_RATIO  # inlier ratio to register (COLMAP: 0.25)
    init_min_tri_angle: float = D2_INIT_MIN_TRI_ANGLE  # degrees of triangulation the initial pair needs
    attempts: int = 2  # incremental runs at most: a weak model is mapped again with the next seed, the best kept
    min_model_size: int = 3  # smallest model kept, in images
    text: bool = False  # write models as COLMAP text instead of binary

    def __post_init__(self) -> None:
        check_choice(self, "camera_mode", CAMERA_MODES, optional=True)
        check_choice(self, "camera_model", CAMERA_MODELS)
        check_choice(self, "refine_intrinsics", INTRINSICS_REFINEMENTS)
        check_choice(self, "mapper", MAPPERS)
        check_numbers(self, abs_pose_min_inliers={"at_least": 1},
                      abs_pose_min_inlier_ratio={"at_least": 0, "at_most": 1},
                      init_min_tri_angle={"above": 0, "at_most": 180}, attempts={"at_least": 1},
                      min_model_size={"at_least": 2})


@dataclass(frozen=True)
class DenseConfig:
    """Multi-view stereo of the largest model (PatchMatch needs pycolmap with CUDA)."""

    enabled: bool = False  # run MVS into dense/
    max_image_size: int = 2000  # longest side of the images PatchMatch works on
    mesh: bool = False  # Poisson mesh of the fused points
    mesh_trim: float = DEFAULT_MESH_TRIM  # drop the surface where points are sparser than this (0 keeps all)

    def __post_init__(self) -> None:
        check_numbers(self, max_image_size={"at_least": 64}, mesh_trim={"at_least": 0})


@dataclass(frozen=True)
class RunConfig:
    """Where and how the work runs; nothing here changes the results."""

    device: str = "auto"  # "auto" (first CUDA GPU, else CPU), "cpu", "cuda", "cuda:N", "mps"
    ray: str | None = None  # a Ray cluster: "local" starts one, "auto" or "ray://host:port" joins; None: here
    ray_workers: int | None = None  # with ray: workers (default one per GPU, else per ray_cpus_per_worker CPUs)
    ray_cpus_per_worker: int = 1  # with ray: CPUs and torch threads of each worker
    ray_batch: int | None = None  # with ray: images or pairs per task (None: each kind's default)
    batch_size: int | None = None  # images per network call when sizes agree (None: 4 on a GPU, 1 on the CPU)
    loader_workers: int | None = None  # image decoding processes (None: 4 on a GPU, 1 on the CPU; 0: this one)
    gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB  # GPU memory extraction may use, weights included
    progress: bool = True  # progress bars on the terminal
    overwrite: bool = False  # redo every stage instead of resuming

    def __post_init__(self) -> None:
        check_numbers(self, ray_workers={"at_least": 1, "at_most": MAX_RAY_WORKERS, "optional": True},
                      ray_cpus_per_worker={"at_least": 1}, ray_batch={"at_least": 1, "optional": True},
                      batch_size={"at_least": 1, "optional": True},
                      loader_workers={"at_least": 0, "at_most": MAX_LOADER_WORKERS, "optional": True},
                      gpu_memory_gib={"above": 0})


@dataclass(frozen=True)
class ReconstructionConfig:
    """Photos to models: every section of ``d2sfm.reconstruct``."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    run: RunConfig = field(default_factory=RunConfig)


INLOC_CUTOUT_FOCAL = 1385.6406460551018  # px: InLoc's 1600 px wide cutouts with a 60 degree horizontal field of view


@dataclass(frozen=True)
class AachenConfig:
    """Aachen Day-Night, the local-feature protocol (datasets/aachen.md): ``d2sfm.localize("aachen", ...)``."""

    version: str = "1.0"  # dataset version: "1.0" or "1.1"
    pairs: str | None = None  # retrieval variant: a query-database pair file instead of the protocol's query pairs
    queries: str = "night"  # with pairs: the query sets to localize, comma-separated from day, night
    db_pairs: str | None = None  # with pairs: database pairs to triangulate from (None: the protocol's)
    min_inliers: int = 30  # 2D-3D inliers a query needs to register (COLMAP's and the protocol's)
    min_inlier_ratio: float = 0.25  # inlier ratio a query needs to register (COLMAP's)
    refine_query_intrinsics: bool = False  # estimate the queries' focal and distortion (the protocol fixes them)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_choice(self, "version", ("1.0", "1.1"))
        check_numbers(self, min_inliers={"at_least": 1}, min_inlier_ratio={"at_least": 0, "at_most": 1})


@dataclass(frozen=True)
class InLocConfig:
    """InLoc, queries against RGB-D scans (datasets/inloc.md): ``d2sfm.localize("inloc", ...)``."""

    pairs: str | None = None  # query-cutout retrieval pairs, best first (None: DATASET/pairs/pairs-query-netvlad40.txt)
    top_k: int = 40  # cutouts per query taken from the pairs
    ransac_max_error: float | None = None  # absolute pose RANSAC threshold in query pixels (None: 48 px at 4032 px)
    min_inliers: int = 30  # fewer inliers than this counts as not localized
    cutout_focal: float = INLOC_CUTOUT_FOCAL  # cutout focal length, for the fallback pose of a failed query only
    features: FeatureConfig = field(default_factory=FeatureConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_numbers(self, top_k={"at_least": 1}, ransac_max_error={"above": 0, "optional": True},
                      min_inliers={"at_least": 1}, cutout_focal={"above": 0})


@dataclass(frozen=True)
class ImagesLocalizationConfig:
    """New photos registered against any d2sfm reconstruction: ``d2sfm.localize_images(reference, queries, ...)``.
    ``features`` must be the reference's own extraction settings (they are checked against its features.h5)."""

    pairs: str = "auto"  # "exhaustive" (every reference image), "retrieval" (top_k by global descriptor), "auto":
    # exhaustive up to 100 reference images
    top_k: int = 20  # retrieval: reference images matched per query
    camera_model: str = "SIMPLE_RADIAL"  # the queries' COLMAP camera model
    camera_params: str = ""  # the queries' known intrinsics (COLMAP order); "": EXIF or COLMAP's guess, focal estimated
    ransac_max_error: float = 12.0  # absolute pose RANSAC threshold in query pixels (COLMAP's)
    min_inliers: int = 15  # fewer 2D-3D inliers than this counts as not localized
    thresholds: str = "0.01,0.1;0.05,0.5;0.1,1"  # --gt: (position in the model's units, degrees) recall thresholds
    refine: bool = True  # query keypoints matched to a 3D point's observation aligned to it in its reference photo
    reference_images: str = ""  # the reference scene's photos; "": REFERENCE/images
    features: FeatureConfig = field(default_factory=FeatureConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_choice(self, "pairs", IMAGES_PAIRS)
        check_choice(self, "camera_model", CAMERA_MODELS)
        check_numbers(self, top_k={"at_least": 1}, ransac_max_error={"above": 0}, min_inliers={"at_least": 4})


LOCALIZATION_CONFIGS = {"aachen": AachenConfig, "inloc": InLocConfig}

ORIGINAL_D2 = FeatureConfig(scales=SINGLE_SCALE, geometric_centres=False)  # the original extractor, for parity

# The named presets, as hloc's confs: a preset is a whole ReconstructionConfig (d2sfm.preset(name)).
PRESETS: dict[str, ReconstructionConfig] = {
    # the default: multi-scale D2 (registers far more reliably), corrected centres, refined keypoints
    "d2-ms": ReconstructionConfig(),
    # the same without refinement: the detections as the network gives them
    "d2-ms-unrefined": ReconstructionConfig(refine=RefineConfig(enabled=False)),
    # single-scale D2 (a third of the time of multi-scale), refined
    "d2-ss": ReconstructionConfig(features=FeatureConfig(scales=SINGLE_SCALE)),
    "d2-ss-unrefined": ReconstructionConfig(features=FeatureConfig(scales=SINGLE_SCALE),
                                            refine=RefineConfig(enabled=False)),
    # the original D2-Net pipeline: its extractor's defaults, no refinement (the paper's numbers)
    "d2-original": ReconstructionConfig(features=ORIGINAL_D2, refine=RefineConfig(enabled=False)),
    # pycolmap's SIFT through the same pipeline: the classical baseline
    "sift": ReconstructionConfig(features=FeatureConfig(method="sift"), refine=RefineConfig(enabled=False)),
}


def preset(name: str = "d2-ms", **sections) -> ReconstructionConfig:
    """The named preset, with whole sections replaced: ``preset("d2-ss", run=RunConfig(device="cpu"))``."""
    if name not in PRESETS:
        raise D2sfmError(f"no preset {name!r}; the presets are {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **sections)
