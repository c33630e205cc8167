"""The Python API: one typed function per stage and one for the whole job, each taking the configuration
dataclasses of ``d2sfm.config``. The command lines are thin layers over these functions (they parse options, build
the configs and call them), so a script gets every capability of the commands. ``import d2sfm`` exposes them:
``d2sfm.extract``, ``d2sfm.match``, ``d2sfm.pairs``, ``d2sfm.reconstruct``, ``d2sfm.localize``,
``d2sfm.localize_images``, ``d2sfm.refine``, ``d2sfm.evaluate_poses`` and ``d2sfm.evaluate_model``. The benchmark
protocols (HPatches, ETH, the ground-truth comparison) are ``pipelines.hpatches.run``, ``pipelines.eth.run`` and
``pipelines.ground_truth.run`` with their options dataclasses.
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


def refine(target: PathLike, images: PathLike, *, method: str | None = None, complete_tracks: bool = False,
           weights: str | None = None, device: str = "auto", progress: bool = True):
    """Refine, in place and atomically, the keypoints of a verified COLMAP database (``target`` a database file:
    tracks aligned before mapping, by ``method``: "patch" by default, or "featuremetric" with ``weights``) or the
    observations of a mapped model (``target`` a model folder: patch alignment and bundle adjustment;
    ``complete_tracks`` adds each point where its patch is found in covisible images); ``images``: the folder the
    scene was built from. An option the target does not use is refused, not ignored. Returns the refinement's
    summary. ``python -m d2sfm.refine`` runs this."""
    from d2sfm.config import RefineConfig

    target, images = Path(target), Path(images)
    if target.is_dir() and (method is not None or weights is not None):
        raise D2sfmError("--method and --weights (method, weights) apply to a database; a model folder is refined by "
                         "patch alignment")
    if not target.is_dir() and complete_tracks:
        raise D2sfmError("--complete-tracks (complete_tracks) applies to a model folder, whose 3D points have tracks "
                         "to complete")
    method = method or "patch"
    RefineConfig(method=method)  # the method's name checked as every config checks it
    if method == "patch" and weights is not None:
        raise D2sfmError("--weights (weights) applies to --method featuremetric; patch alignment reads only the images")
    if not images.is_dir():
        raise D2sfmError(f"{images}: no such image folder; pass the folder the scene was built from")
    if target.is_dir():
        from d2sfm.refinement.model_refinement import ModelRefineSettings, refine_model_folder

        if not (target / "images.bin").is_file() and not (target / "images.txt").is_file():
            raise D2sfmError(f"{target}: not a COLMAP model folder (no images.bin or images.txt); check the path")
        return refine_model_folder(target, images, resolve_device(device),
                                   ModelRefineSettings(complete_tracks=complete_tracks), progress=progress)
    from d2sfm.features.weights import resolve_weights
    from d2sfm.refinement.database_refinement import RefineSettings, check_refinable_database, refine_database

    if not target.is_file():
        raise D2sfmError(f"{target}: no such COLMAP database or model folder; check the path")
    check_refinable_database(target)
    resolved = resolve_weights(weights, progress=progress) if method == "featuremetric" else None
    return refine_database(target, images, resolved, resolve_device(device), RefineSettings(method=method),
                           progress=progress)


def evaluate_poses(ground_truth: PathLike, predicted: PathLike, thresholds: str = "aachen"):
    """Score a pose file (``name qw qx qy qz tx ty tz``, a submission) against true poses: the share of queries
    within each threshold (a preset name, or "metres,degrees;..."), median errors, missing queries
    (``python -m d2sfm.evaluate poses``)."""
    from d2sfm.localization.pose_scores import parse_thresholds, score_poses
    from d2sfm.localization.poses import read_poses

    return score_poses(read_poses(ground_truth, required=True), read_poses(predicted), parse_thresholds(thresholds))


def evaluate_model(model: PathLike, ground_truth: PathLike, inlier_share: float | None = None):
    """Score a model's cameras against true cameras (a folder of Strecha ``.camera`` files or a COLMAP model):
    robust similarity alignment, per-camera rotation and position errors, relative-pose AUC
    (``python -m d2sfm.evaluate gt --model``). ``model``: a model folder or a scene folder (its sparse/0)."""
    from d2sfm.evaluation.ground_truth import read_truth, score_model
    from d2sfm.io.model_files import read_model

    model = Path(model)
    folder = model / "sparse" / "0" if (model / "sparse" / "0").is_dir() else model
    arguments = () if inlier_share is None else (inlier_share,)
    return score_model(read_model(folder), read_truth(Path(ground_truth)), *arguments)
