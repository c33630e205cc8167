"""Localization scores: the share of queries within (position, rotation) threshold pairs, and median errors.

Queries in the ground truth but missing from the prediction count as failures (infinite error), as on
visuallocalization.net; predictions for images without ground truth are ignored and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.localization.poses import Pose, pose_errors

# (metres, degrees) pairs of the papers and the benchmark's website.
THRESHOLD_PRESETS: dict[str, list[tuple[float, float]]] = {
    "aachen": [(0.5, 2.0), (1.0, 5.0), (5.0, 10.0), (10.0, 25.0)],  # D2-Net paper, Aachen Day-Night v1.0
    "aachen_v1_1": [(0.25, 2.0), (0.5, 5.0), (5.0, 10.0)],
    "inloc": [(0.25, 10.0), (0.5, 10.0), (1.0, 10.0)],
}


def parse_thresholds(text: str) -> list[tuple[float, float]]:
    """A preset name, or pairs 'metres,degrees' separated by ';' (e.g. '0.25,2;0.5,5')."""
    if text in THRESHOLD_PRESETS:
        return THRESHOLD_PRESETS[text]
    try:
        pairs = [tuple(float(v) for v in item.split(",")) for item in text.split(";") if item.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError
    except ValueError:
        raise D2sfmError(f"thresholds {text!r}: use a preset ({', '.join(THRESHOLD_PRESETS)}) or "
                         "'metres,degrees;metres,degrees', e.g. '0.25,2;0.5,5'") from None
    return [(float(m), float(d)) for m, d in pairs]


@dataclass
class PoseScores:
    thresholds: list[tuple[float, float]]
    recalls: list[float]  # percent of ground-truth queries within each threshold pair
    median_position_error: float
    median_rotation_error: float
    queries: int
    missing: list[str]
    unknown: list[str]
    errors: dict[str, tuple[float, float]]

    def table(self) -> str:
        lines = [f"{self.queries} queries with ground truth; {len(self.missing)} missing from the prediction"
                 + (f"; {len(self.unknown)} predicted images have no ground truth (ignored)" if self.unknown else "")]
        for (metres, degrees), recall in zip(self.thresholds, self.recalls):
            lines.append(f"  ({metres:g} m, {degrees:g} deg): {recall:6.1f} %")
        lines.append(f"  median errors: {self.median_position_error:.3f} m, {self.median_rotation_error:.3f} deg")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "thresholds": [list(t) for t in self.thresholds], "recall_percent": self.recalls,
            "median_position_error_m": self.median_position_error,
            "median_rotation_error_deg": self.median_rotation_error, "queries": self.queries,
            "missing": self.missing, "unknown": self.unknown,
            "errors": {name: list(e) for name, e in self.errors.items()},
        }


def score_poses(truth: dict[str, Pose], predicted: dict[str, Pose],
                thresholds: list[tuple[float, float]]) -> PoseScores:
    if not truth:
        raise D2sfmError("the ground truth holds no poses")
    errors = {name: pose_errors(truth[name], predicted[name]) for name in truth if name in predicted}
    missing = sorted(set(truth) - set(predicted))
    table = np.array([errors.get(name, (np.inf, np.inf)) for name in truth])
    recalls = [float(100.0 * np.mean((table[:, 0] <= m) & (table[:, 1] <= d))) for m, d in thresholds]
    return PoseScores(thresholds, recalls, float(np.median(table[:, 0])), float(np.median(table[:, 1])),
                      len(truth), missing, sorted(set(predicted) - set(truth)), errors)
