"""The D2 feature and matching stages shared by the pipelines (reconstruct, localize): their common options, one
call that extracts every missing image into features.h5, one that matches every missing pair into matches.h5 (in
this process, or on a Ray cluster with ``--ray``), and the extract-then-match stages of localization."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.features.extraction import default_loading, extract_features, feature_settings
from d2sfm.features.extractor import D2Extractor, ExtractionConfig
from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
from d2sfm.features.weights import resolve_weights
from d2sfm.io.h5 import check_same_settings, list_entries, matched_pairs, pair_key, read_settings
from d2sfm.matching.matcher import match_pairs
from d2sfm.matching.pairs import Pair, write_pairs
from d2sfm.pipeline.stages import RunFolder
from d2sfm.runtime.device import resolve_device


def feature_config(args: argparse.Namespace) -> ExtractionConfig:
    return ExtractionConfig(scales=SINGLE_SCALE if args.single_scale else MULTI_SCALE, max_edge=args.max_edge,
                            max_keypoints=args.max_keypoints, conv=args.conv, precision=args.precision,
                            geometric_centres=not args.original_centres)


def extraction_settings(args: argparse.Namespace, progress: bool = True) -> tuple[Path, ExtractionConfig, dict]:
    """The weights file, the extraction config, and the settings features.h5 records (config and weights hash)."""
    weights = resolve_weights(args.weights, progress=progress)
    config = feature_config(args)
    return weights, config, feature_settings(config, weights)


def check_extraction_settings(args: argparse.Namespace, features_path: Path, progress: bool = True) -> None:
    """A rerun with other extraction options or weights must not go on with the earlier features as if they were
    the new ones, even when every image is there: the same error as ``d2sfm.extract`` gives (pass --overwrite).
    How descriptors are stored (float16 or float32) does not change the features."""
    stored = read_settings(features_path) if features_path.is_file() else {}
    if stored:
        check_same_settings(features_path, stored, extraction_settings(args, progress)[2], ignore=("descriptor_dtype",))


def extract_missing(args: argparse.Namespace, image_dir: Path, names: Sequence[str], features_path: Path,
                    progress: bool = True) -> list[tuple[str, str]]:
    """Extract the images not yet in ``features_path``; returns [(name, error)] of unreadable ones."""
    done = len(set(list_entries(features_path)) & set(names))
    print(f"  {len(names) - done} image(s) to extract, {done} done earlier")
    weights, config, settings = extraction_settings(args, progress)
    if args.ray is not None:
        from d2sfm.cluster.extract import extract_on_cluster

        _, failed = extract_on_cluster(image_dir, names, features_path, weights, config, settings, args.ray,
                                       workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker,
                                       progress=progress)
        return failed
    device = resolve_device(args.device)
    extractor = D2Extractor(weights, config, device)
    batch_size, workers = default_loading(device)
    _, failed = extract_features(image_dir, names, features_path, extractor, settings, batch_size=batch_size,
                                 workers=workers, progress=progress)
    return failed


def match_missing(args: argparse.Namespace, features_path: Path, pairs: Sequence[Pair], matches_path: Path,
                  progress: bool = True) -> None:
    """Match the pairs not yet in ``matches_path`` (with ``--min-similarity`` and ``--ratio`` where the command
    has them)."""
    matched = matched_pairs(matches_path)
    done = sum(pair_key(a, b) in matched or pair_key(b, a) in matched for a, b in pairs)
    print(f"  {len(pairs) - done} pair(s) to match, {done} matched earlier")
    min_similarity, ratio = getattr(args, "min_similarity", None), getattr(args, "ratio", None)
    if args.ray is not None:
        from d2sfm.cluster.match import match_on_cluster

        match_on_cluster(features_path, pairs, matches_path, args.ray, min_similarity, ratio,
                         workers=args.ray_workers, cpus_per_worker=args.ray_cpus_per_worker, progress=progress)
        return
    match_pairs(features_path, pairs, matches_path, resolve_device(args.device), min_similarity, ratio,
                progress=progress)


def extract_and_match(args: argparse.Namespace, run: RunFolder, image_root: Path, names: Sequence[str],
                      pairs: Sequence[Pair], progress: bool = True) -> tuple[set[str], list[Pair]]:
    """Stages ``extract``, ``pairs`` and ``match`` into ``run``'s features.h5, pairs.txt and matches.h5. Images that
    failed (unreadable, or too large for the GPU) are reported, remembered in the run's state and their pairs
    dropped with a count; returns the images with features and the pairs matched."""
    features, pairs_path, matches = run.path("features.h5"), run.path("pairs.txt"), run.path("matches.h5")

    def extract() -> None:
        failed = extract_missing(args, image_root, names, features, progress)
        run.save(unreadable=[list(f) for f in failed])
        for _, error in failed:
            print(f"  skipped: {error}")

    check_extraction_settings(args, features, progress)
    extracted = set(list_entries(features)) if features.is_file() else set()
    run.stages.run("extract", all(n in extracted for n in names) or "unreadable" in run.state, extract)
    extracted = set(list_entries(features))
    usable = [p for p in pairs if p[0] in extracted and p[1] in extracted]
    if len(usable) < len(pairs):
        print(f"  {len(pairs) - len(usable)} pairs skipped: an image of the pair has no features")
    run.stages.run("pairs", pairs_path.is_file(), lambda: write_pairs(pairs_path, usable))
    matched = matched_pairs(matches)
    run.stages.run("match", all(pair_key(a, b) in matched for a, b in usable),
                   lambda: match_missing(args, features, usable, matches, progress))
    return extracted, usable
