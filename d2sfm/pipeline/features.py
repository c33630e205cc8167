"""The feature stages every pipeline shares (reconstruct, localize, the API): one call that extracts every
missing image into features.h5 and one that matches every missing pair into matches.h5, on the backend the run
asks for (this process or a Ray cluster), and the extract-then-match stages of localization."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from d2sfm.config import FeatureConfig, MatchConfig, RunConfig
from d2sfm.features.extraction import feature_settings
from d2sfm.features.weights import resolve_weights
from d2sfm.io.h5 import check_same_settings, feature_identities, list_entries, read_settings
from d2sfm.io.matches_h5 import matched_pairs, pair_key, pairs_to_match
from d2sfm.matching.pairs import Pair, read_pairs, write_pairs
from d2sfm.pipeline.backends import backend_for
from d2sfm.pipeline.stage_settings import StageSettings
from d2sfm.pipeline.stages import RunFolder

log = logging.getLogger("d2sfm")


def extraction_settings(features: FeatureConfig, progress: bool = True) -> tuple[Path | None, dict]:
    """The weights file (None for SIFT) and the settings features.h5 records (the extraction config and the
    weights' hash)."""
    weights = resolve_weights(features.weights, progress=progress) if features.method == "d2" else None
    return weights, feature_settings(features.extraction(), weights, features.method)


def check_extraction_settings(features: FeatureConfig, features_path: Path, progress: bool = True) -> None:
    """A rerun with other extraction options or weights must not go on with the earlier features as if they were
    the new ones, even when every image is there: refused, naming the pipeline options that give the file's
    settings (a file from ``d2sfm.extract``, whose defaults differ, is the common case). How descriptors are
    stored (float16 or float32) does not change the features."""
    stored = read_settings(features_path) if features_path.is_file() else {}
    if stored:
        check_same_settings(features_path, stored, extraction_settings(features, progress)[1],
                            ignore=("descriptor_dtype",), fix=pipeline_remedy)


def pipeline_remedy(stored: dict, differing: list[str]) -> str:
    """The options of reconstruct and localize that give the stored settings, where they have one."""
    flags = {
        "scales": lambda v: "--single-scale" if v == [1.0] else "" if v == [0.5, 1.0, 2.0] else None,
        "geometric_centres": lambda v: "" if v else "--original-centres",
        "max_edge": lambda v: f"--max-edge {v}", "max_keypoints": lambda v: f"--max-keypoints {v}",
        "conv": lambda v: f"--conv {v}", "precision": lambda v: f"--precision {v}",
        "method": lambda v: f"--features-method {v}", "weights_sha256": lambda v: "--weights (the file they came from)",
    }
    options = [flags[key](stored.get(key)) if key in flags else None for key in differing]
    if any(option is None for option in options):
        return "pass --overwrite to extract them again"
    given = " ".join(option for option in options if option)
    return (f"rerun with the options they were extracted with ({given})" if given else
            "rerun without the options that changed them") + ", or pass --overwrite to extract them again"


def extract_missing(features: FeatureConfig, run: RunConfig, image_dir: Path, names: Sequence[str],
                    features_path: Path, overwrite: bool = False, timings: Path | None = None,
                    announce: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Extract the images not yet in ``features_path``; returns (extracted now, [(name, error)] of the images that
    failed: unreadable, or too large for the device)."""
    if announce and not overwrite:
        done = len(set(list_entries(features_path)) & set(names))
        log.info(f"  {len(names) - done} image(s) to extract, {done} done earlier")
    weights, settings = extraction_settings(features, run.progress)
    return backend_for(run).extract(image_dir, names, features_path, weights, features.extraction(), settings,
                                    descriptor_dtype=np.float32 if features.float32_descriptors else np.float16,
                                    overwrite=overwrite, timings=timings, method=features.method)


def unmatched_pairs(pairs: Sequence[Pair], matches_path: Path,
                    features_path: Path | Sequence[Path] | None = None) -> list[Pair]:
    """The pairs with no matches in ``matches_path`` yet, in either order (a pair list may name (b, a) where
    matches.h5 holds (a, b)). Given ``features_path`` (one features file or several, as matching reads them), also
    the pairs matched from other features than those files hold now (re-extracted since, or not recorded)."""
    if features_path is None or not Path(matches_path).is_file():
        matched = matched_pairs(matches_path)
        return [(a, b) for a, b in pairs if pair_key(a, b) not in matched and pair_key(b, a) not in matched]
    identities = feature_identities(features_path, {name for pair in pairs for name in pair})
    return pairs_to_match(matches_path, pairs, identities)[0]


def match_missing(matching: MatchConfig, run: RunConfig, features_path: Path | Sequence[Path], pairs: Sequence[Pair],
                  matches_path: Path, overwrite: bool = False, announce: bool = True,
                  keep_unrecorded: bool = False) -> int:
    """Match the pairs not yet in ``matches_path`` and those matched there from features extracted again since;
    returns the pairs matched now. A matches file of other match settings is refused (``overwrite``: start it
    again). ``keep_unrecorded``: for the pipelines, whose settings record vouches for the pairs an earlier release
    matched (one pair added since must not cost matching them all again)."""
    if announce:
        done = len(pairs) - len(unmatched_pairs(pairs, matches_path))
        log.info(f"  {len(pairs) - done} pair(s) to match, {done} matched earlier")
    return backend_for(run).match(features_path, pairs, matches_path, matching.min_similarity, matching.ratio,
                                  overwrite=overwrite, keep_unrecorded=keep_unrecorded)


def match_settings(matching: MatchConfig) -> dict:
    """What the matches depend on beyond the features (a pipeline's settings record for its ``match`` stage; what
    matches.h5 itself records is ``matching.matcher.matches_file_settings``)."""
    return {"min_similarity": matching.min_similarity, "ratio": matching.ratio}


# What the localization pipelines of earlier releases matched with (they had no matching options): a folder they
# wrote has no record of its match stage and is compared with this
EARLIER_MATCHING = {"min_similarity": None, "ratio": None}


def extract_and_match(features: FeatureConfig, matching: MatchConfig, run: RunConfig, folder: RunFolder,
                      image_root: Path, names: Sequence[str], pairs: Sequence[Pair],
                      settings: StageSettings) -> tuple[set[str], list[Pair]]:
    """Stages ``extract``, ``pairs`` and ``match`` into ``folder``'s features.h5, pairs.txt and matches.h5. Images
    that failed (unreadable, or too large for the GPU) are reported, remembered in the run's state and their pairs
    dropped with a count; returns the images with features and the pairs matched. Matches made with other
    matching options are made again (``settings``: the run's record, its ``match`` entry ``match_settings``)."""
    features_path, pairs_path, matches = folder.path("features.h5"), folder.path("pairs.txt"), folder.path("matches.h5")

    def extract() -> None:
        _, failed = extract_missing(features, run, image_root, names, features_path)
        folder.save(unreadable=[list(f) for f in failed])
        for _, error in failed:
            log.info(f"  skipped: {error}")

    check_extraction_settings(features, features_path, run.progress)
    extracted = set(list_entries(features_path)) if features_path.is_file() else set()
    # an image that failed before is not tried again; one added since (a larger --top-k, more queries) is extracted
    failed_before = {name for name, _ in folder.state.get("unreadable", [])}
    folder.stages.run("extract", all(n in extracted or n in failed_before for n in names), extract)
    extracted = set(list_entries(features_path))
    usable = [p for p in pairs if p[0] in extracted and p[1] in extracted]
    if len(usable) < len(pairs):
        log.info(f"  {len(pairs) - len(usable)} pairs skipped: an image of the pair has no features")
    # pairs.txt lists this run's pairs: other pairs (another pair list, --top-k or query set) are written anew
    folder.stages.run("pairs", pairs_path.is_file() and read_pairs(pairs_path) == [tuple(p) for p in usable],
                      lambda: write_pairs(pairs_path, usable))
    if settings.own_settings_changed("match"):
        matches.unlink(missing_ok=True)  # every pair's matches differ

    def match() -> None:
        match_missing(matching, run, features_path, usable, matches, keep_unrecorded=True)
        settings.finished("match")

    folder.stages.run("match", not unmatched_pairs(usable, matches), match)
    settings.finished("match")
    return extracted, usable
