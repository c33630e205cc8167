"""Mean matching accuracy (MMA), the D2-Net paper's HPatches protocol (its notebook
``hpatches_sequences/HPatches-Sequences-Matching-Benchmark.ipynb``), for any sequences with ground-truth homographies.

For a pair (image 1, image k), every mutual nearest-neighbour match is projected from image 1 by the homography
and is correct at threshold t when it lands within t pixels of its match in image k. A pair's accuracy is the
share of correct matches (0 for a pair without matches); MMA at t is the mean over pairs, overall and per split
(the sequence name's first letter: ``i`` illumination, ``v`` viewpoint, ``n`` night-like for synthesised ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from d2sfm.io.keypoints import colmap_xy_to_opencv_xy
from d2sfm.synthetic.homographies import warp_points

THRESHOLDS = tuple(range(1, 11))
SPLIT_NAMES = {"i": "illumination", "v": "viewpoint", "n": "night"}  # in table order


def split_of(sequence: str) -> str:
    return sequence[:1]


def match_errors(keypoints0: np.ndarray, keypoints1: np.ndarray, matches: np.ndarray,
                 homography: np.ndarray) -> np.ndarray:
    """Reprojection errors (pixels) of matches (K, 2) between COLMAP-convention keypoints, the homography acting in
    OpenCV's convention as HPatches' do."""
    if len(matches) == 0:
        return np.zeros(0)
    projected = warp_points(homography, colmap_xy_to_opencv_xy(keypoints0[matches[:, 0]]))
    target = colmap_xy_to_opencv_xy(keypoints1[matches[:, 1]])
    errors = np.linalg.norm(projected - target, axis=1)
    return np.where(np.isfinite(errors), errors, np.inf)


def accuracy_at(errors: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Share of matches within each threshold; all zeros when there is no match (as the paper's notebook)."""
    if len(errors) == 0:
        return np.zeros(len(thresholds))
    return np.array([(errors <= t).mean() for t in thresholds])


@dataclass
class PairResult:
    sequence: str
    image: int  # k of the pair (1, k)
    features: tuple[int, int]
    matches: int
    accuracy: list[float]  # at each threshold


def summarise(pairs: Iterable[PairResult], features_per_image: dict[str, int],
              thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """The paper's numbers: MMA per threshold, mean features per image and mutual matches per pair, overall and for
    each split present. ``features_per_image`` maps every image (``sequence/file``) to its feature count."""
    pairs = list(pairs)
    groups = {"overall": pairs}
    order = list(SPLIT_NAMES)
    for split in sorted({split_of(p.sequence) for p in pairs}, key=lambda s: (s not in order, order.index(s)
                                                                               if s in order else 0, s)):
        groups[SPLIT_NAMES.get(split, split)] = [p for p in pairs if split_of(p.sequence) == split]
    summary = {"thresholds": list(thresholds)}
    for group, members in groups.items():
        sequences = {p.sequence for p in members}
        counts = [n for name, n in features_per_image.items() if name.split("/")[0] in sequences]
        summary[group] = {
            "sequences": len(sequences),
            "pairs": len(members),
            "mma": np.mean([p.accuracy for p in members], axis=0).tolist() if members else [0.0] * len(thresholds),
            "features_per_image": float(np.mean(counts)) if counts else 0.0,
            "matches_per_pair": float(np.mean([p.matches for p in members])) if members else 0.0,
        }
    summary["pairs_detail"] = [asdict(p) for p in pairs]
    return summary


def groups_of(summary: dict) -> list[str]:
    """The groups of a :func:`summarise` result: overall first, then each split."""
    return [key for key, value in summary.items() if isinstance(value, dict) and "mma" in value]


def format_table(results: dict[str, dict], shown: Sequence[int] = (1, 3, 5, 10)) -> str:
    """Markdown table: one row per (method, group) with MMA at a few thresholds and the count columns."""
    header = ["method", "split", *[f"MMA@{t}px" for t in shown], "features/image", "matches/pair"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + " |"]
    for method, summary in results.items():
        thresholds = list(summary["thresholds"])
        for group in groups_of(summary):
            row = summary[group]
            mma = [row["mma"][thresholds.index(t)] if t in thresholds else float("nan") for t in shown]
            lines.append("| " + " | ".join([method, f"{group} ({row['sequences']})", *[f"{v:.3f}" for v in mma],
                                            f"{row['features_per_image']:.0f}", f"{row['matches_per_pair']:.0f}"])
                         + " |")
    return "\n".join(lines)
