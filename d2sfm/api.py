"""The Python API: one typed function per stage and one for the whole job, each taking the configuration
dataclasses of ``d2sfm.config``. The command lines are thin layers over these functions (they parse options, build
the configs and call them), so a script gets every capability of the commands. ``import d2sfm`` exposes them:
``d2sfm.extract``, ``d2sfm.match``, ``d2sfm.pairs``, ``d2sfm.reconstruct`` and ``d2sfm.localize``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from d2sfm.config import (
    LOCALIZATION_CONFIGS,
    AachenConfig,
    FeatureConfig,
    ImagesLocalizationConfig,
    InLocConfig,
    MatchConfig,
    PairsConfig,
    ReconstructionConfig,
    RunConfig,
)
from d2sfm.errors import D2sfmError
from d2sfm.io.h5 import list_entries
from d2sfm.io.images import image_sources
from d2sfm.matching.pairs import EXHAUSTIVE_UP_TO, Pair, choose_pairs, read_pairs, write_pairs
from d2sfm.pipeline.features import extract_missing, match_missing
from d2sfm.runtime.device import resolve_device

if TYPE_CHECKING:  # the reconstruct flow needs pycolmap; extraction and matching here do not
    from d2sfm.pipeline.reconstruct import ReconstructionResult

PathLike = str | os.PathLike


@dataclass
class ExtractionResult:
    """What ``extract`` did: the features file, the images asked for, how many were extracted now and found done,
    and the images that failed with their reason (unreadable, not UTF-8 named, too large for the device)."""

    features_path: Path
    names: list[str]
    extracted: int
    already_done: int
    failures: list[tuple[str, str]]


def extract(images: PathLike, features_path: PathLike = "features.h5", config: FeatureConfig | None = None, *,
            names: Sequence[str] | None = None, run: RunConfig | None = None,
            timings: PathLike | None = None) -> ExtractionResult:
    """Extract features of the images in the folder ``images`` (searched recursively; only ``names``, relative to
    it, when given) or listed in the text file ``images``, into ``features_path``. Images already in the file are
    skipped, so an interrupted call resumes; other settings than the file's are refused (``run.overwrite`` starts
    again). ``timings``: write where the time went to this JSON file. The default config is the pipelines'
    (multi-scale, corrected centres); ``d2sfm.config.ORIGINAL_D2`` is the original extractor's."""
    config, run = config or FeatureConfig(), run or RunConfig()
    if names is None:
        root, names = image_sources(Path(images), None)
    else:
        root, names = Path(images), list(dict.fromkeys(names))
    features_path = Path(features_path)
    resolve_device(run.device)  # a wrong device is refused before the weights are looked for
    done = set(list_entries(features_path)) if features_path.is_file() and not run.overwrite else set()
    extracted, failures = extract_missing(config, run, root, names, features_path, overwrite=run.overwrite,
                                          timings=Path(timings) if timings is not None else None, announce=False)
    return ExtractionResult(features_path, list(names), extracted, len(done & set(names)), failures)


def pairs(names: Sequence[str], config: PairsConfig | None = None, *, features_path: PathLike | None = None,
          output: PathLike | None = None) -> list[Pair]:
    """The image pairs to match among ``names`` (``config.method``: exhaustive, sequential, retrieval on the global
    descriptors in ``features_path``, a pair-list file, or auto); written to ``output`` when given."""
    config = config or PairsConfig()
    retrieval = config.method == "retrieval" or (config.method == "auto" and len(names) > EXHAUSTIVE_UP_TO)
    if retrieval and features_path is None:
        raise D2sfmError("retrieval pairs need the features file (features_path) that holds the global descriptors")
    chosen = choose_pairs(config.method, list(names), Path(features_path) if features_path else None, config.top_k,
                          config.overlap)
    if output is not None:
        write_pairs(Path(output), chosen)
    return chosen


def match(features_path: PathLike, image_pairs: Sequence[Pair] | PathLike, matches_path: PathLike = "matches.h5",
          config: MatchConfig | None = None, *, run: RunConfig | None = None) -> int:
    """Match the descriptors of every pair (a list of (name, name), or a pair-list file) into ``matches_path`` by
    mutual nearest neighbours; pairs matched earlier are skipped. Returns the pairs matched now."""
    config, run = config or MatchConfig(), run or RunConfig()
    features_path = Path(features_path)
    if not features_path.is_file():
        raise D2sfmError(f"{features_path}: no such features file; extract the images first (d2sfm.extract)")
    if isinstance(image_pairs, (str, os.PathLike)):
        image_pairs = read_pairs(Path(image_pairs), known_names=list_entries(features_path))
    return match_missing(config, run, features_path, list(image_pairs), Path(matches_path), overwrite=run.overwrite,
                         announce=False)


def reconstruct(scene: PathLike, config: ReconstructionConfig | None = None, *, images: PathLike | None = None,
                features: PathLike | None = None, demo: bool = False) -> ReconstructionResult:
    """Photos in ``scene/images`` (or ``images``) to COLMAP models under ``scene``, exactly as
    ``python -m d2sfm.reconstruct`` does: features.h5, pairs.txt, matches.h5, database.db, sparse/, model.png,
    dense/ (``config.dense``) and stats.json. Finished stages are skipped, so a rerun resumes. Returns the models
    (``result.largest`` is ``sparse/0``) and the statistics written to stats.json. ``features``: an existing
    features.h5 of d2sfm or hloc instead of extracting; ``demo``: render the embedded synthetic scene first and check
    the cameras against the truth."""
    from d2sfm.pipeline.reconstruct import reconstruct_scene

    return reconstruct_scene(scene, config, images=images, features=features, demo=demo)


def localize_images(reference: PathLike, queries: PathLike, config: ImagesLocalizationConfig | None = None, *,
                    output: PathLike | None = None, gt: PathLike | None = None) -> dict:
    """Register the photos in ``queries`` against the d2sfm reconstruction in the scene folder ``reference``
    (extract with the reference's settings, pair, match, 2D-3D through the model's observations, absolute pose), as
    ``python -m d2sfm.localize images`` does: poses.txt (benchmark format) and summary.json under ``output``,
    scored against the true cameras ``gt`` when given; returns the summary. Finished stages are skipped."""
    from d2sfm.pipeline.localize_images import localize_images as run

    return run(reference, queries, config, output, gt)


def localize(benchmark: str, dataset: PathLike, config: AachenConfig | InLocConfig | None = None, *,
             output: PathLike | None = None) -> dict:
    """Localize the queries of a benchmark (``"aachen"`` or ``"inloc"``) in the dataset folder (layouts:
    datasets/aachen.md, datasets/inloc.md), write its submission file and summary.json under ``output`` (default
    outputs/<benchmark>...), scored where the folder holds a ground truth; returns the summary. Finished stages are
    skipped, so a rerun resumes. The protocols themselves live in ``pipelines/``."""
    if benchmark not in LOCALIZATION_CONFIGS:
        raise D2sfmError(f"no benchmark {benchmark!r}; d2sfm localizes {', '.join(LOCALIZATION_CONFIGS)}")
    config = config or LOCALIZATION_CONFIGS[benchmark]()
    if not isinstance(config, LOCALIZATION_CONFIGS[benchmark]):
        raise D2sfmError(f"{benchmark} takes a {LOCALIZATION_CONFIGS[benchmark].__name__}, not a "
                         f"{type(config).__name__}")
    protocol = importlib.import_module(f"pipelines.{benchmark}")
    return protocol.localize(dataset, config, output)
