"""HPatches sequences in the D2-Net paper's protocol (``python -m d2sfm.evaluate hpatches``).

108 sequences of 6 images (the 8 sequences with images above 1600 x 1200 excluded, as the paper's download script
does), image 1 against images 2-6, mutual nearest-neighbour matching, and mean matching accuracy at 1-10 px
overall and per split with the mean numbers of features per image and of matches per pair (:mod:`d2sfm.mma`).
The same code runs on sequences synthesised from any photos (:mod:`pipelines.synthetic_sequences`).

Methods compared side by side: d2sfm single- and multi-scale with any number of weights, and OpenCV SIFT and
RootSIFT. Each method's features are cached in ``OUTPUT/features/<kind>-<settings hash>.h5`` (resumable, one
file per setting), so adding a method or rerunning with other plots costs only the new extraction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from d2sfm.errors import D2sfmError
from d2sfm.evaluation.mma import THRESHOLDS, PairResult, accuracy_at, format_table, match_errors, summarise
from d2sfm.features.extraction import extract_features, feature_settings
from d2sfm.features.extractor import D2Extractor, ExtractionConfig
from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
from d2sfm.features.sift import sift_features
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import read_text_file, write_text_atomic
from d2sfm.io.h5 import FeatureWriter, read_features
from d2sfm.io.images import ImageReadError, read_image_bgr
from d2sfm.matching.mnn import mutual_nearest_neighbours
from d2sfm.pipeline.stages import RunFolder
from d2sfm.runtime.device import resolve_device
from pipelines.synthetic_sequences import SPLITS

log = logging.getLogger("d2sfm")

RELEASE_FOLDER = "hpatches-sequences-release"
PAPER_EXCLUDED = ("i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding", "v_artisans",
                  "v_astronautis", "v_talent")  # hpatches_sequences/download.sh of the D2-Net code
MAX_SIZE = (1600, 1200)
IMAGE_SUFFIXES = (".ppm", ".png", ".jpg")
METHOD_KINDS = {"d2-ss": "d2sfm SS", "d2-ms": "d2sfm MS", "sift": "SIFT", "rootsift": "RootSIFT"}
DATASET_HELP = "see datasets/hpatches.md for the layout"


@dataclass
class HSequence:
    name: str
    images: list[str]  # "sequence/1.ppm" ... "sequence/6.ppm", relative to the dataset root
    homographies: dict[int, np.ndarray] = field(default_factory=dict)  # k -> H_1_k


def dataset_root(path: Path) -> Path:
    """The folder holding the sequences: ``path`` itself or its ``hpatches-sequences-release``."""
    if (path / RELEASE_FOLDER).is_dir():
        return path / RELEASE_FOLDER
    if not path.is_dir():
        raise D2sfmError(f"{path}: no such folder; {DATASET_HELP}")
    return path


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (extraction reads them later)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        raise D2sfmError(f"{path}: cannot read this image; replace it with the dataset's file") from None


def _too_large(size: tuple[int, int], max_size: tuple[int, int]) -> bool:
    return max(size) > max(max_size) or min(size) > min(max_size)


def _read_sequence(root: Path, name: str) -> HSequence:
    folder = root / name
    suffix = next((s for s in IMAGE_SUFFIXES if (folder / f"1{s}").is_file()), None)
    if suffix is None:
        raise D2sfmError(f"{folder}: no 1.ppm/1.png/1.jpg; {DATASET_HELP}")
    sequence = HSequence(name, [f"{name}/{k}{suffix}" for k in range(1, 7)])
    for k in range(2, 7):
        path = folder / f"H_1_{k}"
        if not (folder / f"{k}{suffix}").is_file() or not path.is_file():
            raise D2sfmError(f"{path}: missing (each sequence needs images 1-6 and H_1_2..H_1_6); {DATASET_HELP}")
        try:
            homography = np.loadtxt(read_text_file(path, "homography file").splitlines(), dtype=np.float64)
        except ValueError:
            homography = None
        if homography is None or homography.shape != (3, 3):
            raise D2sfmError(f"{path}: not a 3 x 3 homography (three lines of three numbers); {DATASET_HELP}")
        sequence.homographies[k] = homography
    return sequence


def find_sequences(path: Path, max_size: tuple[int, int] | None = MAX_SIZE,
                   excluded: Sequence[str] = PAPER_EXCLUDED) -> tuple[Path, list[HSequence], list[str]]:
    """(root, sequences, excluded names): every ``[iv n]_*`` folder, minus the paper's exclusions and any sequence
    with an image larger than ``max_size`` (None: keep all)."""
    root = dataset_root(path)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and re.match(r"^[a-z]_", p.name))
    if not names:
        raise D2sfmError(f"{root}: no sequence folders (i_*, v_*); {DATASET_HELP}")
    kept, dropped = [], []
    for name in names:
        sequence = _read_sequence(root, name)
        if name in excluded or (max_size and any(_too_large(_image_size(root / i), max_size)
                                                 for i in sequence.images)):
            dropped.append(name)
        else:
            kept.append(sequence)
    return root, kept, dropped


@dataclass(frozen=True)
class D2Options:
    """The D2 extraction settings a comparison shares (SIFT ignores all but ``max_keypoints``)."""

    max_keypoints: int = 0
    max_edge: int = 1600
    original_centres: bool = False
    conv: str = "exact"
    precision: str = "fp32"


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a feature kind and, for D2, its weights."""

    kind: str  # a key of METHOD_KINDS
    label: str  # shown in tables and plots
    weights: Path | None = None

    def settings(self, options: D2Options) -> dict:
        if self.kind in ("sift", "rootsift"):
            return {"method": self.kind, "opencv": cv2.__version__, "max_keypoints": options.max_keypoints}
        config = self.extraction_config(options)
        return {"method": self.kind, **feature_settings(config, self.weights)}

    def extraction_config(self, options: D2Options) -> ExtractionConfig:
        return ExtractionConfig(scales=MULTI_SCALE if self.kind == "d2-ms" else SINGLE_SCALE,
                                max_edge=options.max_edge, max_keypoints=options.max_keypoints,
                                geometric_centres=not options.original_centres, conv=options.conv,
                                precision=options.precision)


def parse_methods(kinds: Sequence[str], weight_specs: Sequence[str]) -> list[Method]:
    """``kinds`` from METHOD_KINDS; each D2 kind runs once per weights spec ``[LABEL=]PATH_OR_NAME`` (no spec:
    the default weights). Labels get the weights' name only when several weights are compared."""
    unknown = [k for k in kinds if k not in METHOD_KINDS]
    if unknown:
        raise D2sfmError(f"unknown methods {unknown}; choose from {', '.join(METHOD_KINDS)}")
    weights = []
    for spec in weight_specs or [None]:
        label, path = spec.split("=", 1) if spec and "=" in spec else (None, spec)
        resolved = resolve_weights(path)
        weights.append((label or resolved.stem, resolved))
    methods = []
    for kind in dict.fromkeys(kinds):
        if kind.startswith("d2"):
            for label, path in weights:
                suffix = f" [{label}]" if len(weights) > 1 else ""
                methods.append(Method(kind, METHOD_KINDS[kind] + suffix, path))
        else:
            methods.append(Method(kind, METHOD_KINDS[kind]))
    return methods


def feature_cache(output: Path, method: Method, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return output / "features" / f"{method.kind}-{digest}.h5"  # labels may differ, the features would not


def _extract_sift(root: Path, names: Sequence[str], cache: Path, settings: dict, root_sift: bool,
                  max_keypoints: int, progress: bool) -> None:
    writer = FeatureWriter(cache, settings, descriptor_dtype=np.float32)
    for name in tqdm([n for n in names if n not in writer.done], desc=f"extracting {settings['method']}",
                     unit="img", disable=not progress):
        try:
            image = read_image_bgr(root / name)
        except ImageReadError as error:
            raise D2sfmError(f"{error}; replace the file") from None
        writer.write(name, sift_features(image, max_keypoints, root=root_sift))


def extract_method(method: Method, root: Path, names: Sequence[str], output: Path, device: torch.device,
                   options: D2Options = D2Options(), progress: bool = True) -> Path:
    """Features of every image for one method, in its cache file (images already there are skipped)."""
    settings = method.settings(options)
    cache = feature_cache(output, method, settings)
    if method.kind in ("sift", "rootsift"):
        _extract_sift(root, names, cache, settings, method.kind == "rootsift", options.max_keypoints, progress)
        return cache
    extractor = D2Extractor(method.weights, method.extraction_config(options), device)
    _, failed = extract_features(root, names, cache, extractor, settings, progress=progress)
    if failed:
        raise D2sfmError(f"{failed[0][1]}; replace the file")
    return cache


def evaluate_method(cache: Path, sequences: Sequence[HSequence], device: torch.device,
                    thresholds: Sequence[float] = THRESHOLDS, progress: bool = True, label: str = "") -> dict:
    """MNN-match image 1 with images 2-6 of every sequence and summarise (:func:`d2sfm.evaluation.mma.summarise`)."""
    pairs, counts = [], {}
    for sequence in tqdm(sequences, desc=f"matching {label}".strip(), unit="seq", disable=not progress):
        features = [read_features(cache, name) for name in sequence.images]
        counts.update({name: len(f.keypoints) for name, f in zip(sequence.images, features)})
        reference = torch.from_numpy(features[0].descriptors.astype(np.float32)).to(device)
        for k in range(2, 7):
            other = features[k - 1]
            matches, _ = mutual_nearest_neighbours(reference, torch.from_numpy(
                other.descriptors.astype(np.float32)).to(device))
            matches = matches.cpu().numpy()
            errors = match_errors(features[0].keypoints, other.keypoints, matches, sequence.homographies[k])
            pairs.append(PairResult(sequence.name, k, (len(features[0].keypoints), len(other.keypoints)),
                                    len(matches), accuracy_at(errors, thresholds).tolist()))
    return summarise(pairs, counts, thresholds)


def run_benchmark(path: Path, methods: Sequence[Method], output: Path, device: torch.device,
                  options: D2Options = D2Options(), max_size: tuple[int, int] | None = MAX_SIZE,
                  progress: bool = True) -> dict:
    """Every method on every kept sequence; writes and returns ``OUTPUT/hpatches.json``'s content. Runs on the
    pipelines' one stage runner: a method's features and its evaluation are stages recorded in ``OUTPUT/state.json``
    with their times and peak memory; finished features are skipped on a rerun, the evaluation (matching, seconds)
    runs again, under the method's label of this run."""
    root, sequences, excluded = find_sequences(path, max_size)
    names = [name for sequence in sequences for name in sequence.images]
    folder = RunFolder(output)
    results = {}
    for method in methods:
        cache = feature_cache(output, method, method.settings(options))
        finished = folder.state.setdefault("features", [])
        folder.stages.run(f"features {method.label}", cache.stem in finished and cache.is_file(), lambda: (
            extract_method(method, root, names, output, device, options, progress), finished.append(cache.stem)))
        folder.stages.run(f"evaluate {method.label}", False, lambda: results.update({method.label: {
            **evaluate_method(cache, sequences, device, progress=progress, label=method.label),
            "features_file": str(cache)}}))
    report = {"dataset": str(root), "sequences": [s.name for s in sequences], "excluded": excluded,
              **asdict(options), "methods": results}
    write_text_atomic(output / "hpatches.json", json.dumps(report, indent=1))
    return report


@dataclass(frozen=True)
class HPatchesOptions:
    """What ``python -m d2sfm.evaluate hpatches`` can be told (its options say the same)."""

    dataset: Path | None = None  # the HPatches folder (datasets/hpatches.md); or images:
    images: Path | None = None  # any folder of photos: sequences are synthesised from them into OUTPUT/sequences
    methods: tuple[str, ...] = tuple(METHOD_KINDS)  # the feature methods to evaluate
    weights: tuple[str, ...] = ()  # D2 weights, "[LABEL=]path or name" each (none: $D2SFM_WEIGHTS or d2_tf)
    output: Path | None = None  # results and feature cache (default outputs/hpatches[_synth])
    max_keypoints: int = 0  # keep each image's best N features by score (0: all, as in the paper)
    max_edge: int = 1600  # D2 network input size limit
    original_centres: bool = False  # D2: the original code's keypoint positions
    conv: str = "exact"  # D2 backbone convolutions on the CPU
    precision: str = "fp32"  # D2 backbone arithmetic on a GPU
    all_sizes: bool = False  # keep every sequence (default: drop the paper's 8 with images above 1600 x 1200)
    seed: int = 0  # images: synthesis seed
    synth_max_edge: int = 512  # images: longer side of the synthesised images
    splits: tuple[str, ...] = tuple(SPLITS)  # images: i illumination, v viewpoint, n night-like
    plots: bool = True  # write the PNG figures
    progress: bool = True  # progress bars
    device: str = "auto"  # extraction and matching device


def run(options: HPatchesOptions) -> dict:
    """Mean matching accuracy of each method on the sequences, written to hpatches.json (and figures) under the
    output folder; returns the report."""
    from d2sfm.evaluation.plots import PLOTS_HINT, plot_counts, plot_mma
    from pipelines.synthetic_sequences import synthesise_sequences

    output = options.output or Path("outputs/hpatches_synth" if options.images else "outputs/hpatches")
    dataset = options.dataset
    if options.images:
        dataset = output / "sequences"
        synthesise_sequences(options.images, dataset, options.seed, options.synth_max_edge, options.splits,
                             progress=options.progress)
    if options.max_keypoints < 0:
        raise D2sfmError(f"--max-keypoints {options.max_keypoints}: pass 0 (all) or a positive number")
    methods = parse_methods(options.methods, list(options.weights))
    d2_options = D2Options(max_keypoints=options.max_keypoints, max_edge=options.max_edge,
                           original_centres=options.original_centres, conv=options.conv, precision=options.precision)
    report = run_benchmark(dataset, methods, output, resolve_device(options.device), d2_options,
                           None if options.all_sizes else MAX_SIZE, progress=options.progress)
    kept, excluded = len(report["sequences"]), len(report["excluded"])
    log.info(f"{kept} sequences ({excluded} excluded: {', '.join(report['excluded']) or 'none'})")
    log.info(format_table(report["methods"]))
    log.info(f"wrote {output / 'hpatches.json'}")
    if not options.plots:
        return report
    if plot_mma(report["methods"], output / "mma.png") and plot_counts(report["methods"], output / "counts.png"):
        log.info(f"wrote {output / 'mma.png'} and {output / 'counts.png'}")
    else:
        log.info(PLOTS_HINT)
    return report
