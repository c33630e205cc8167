"""The end of every localization run: one pose per query in the benchmark's submission format, a JSON summary,
and the scores when a ground truth is at hand.

Every query gets a line. One that could not be localised takes the pose of its best-matching database image (the
usual fallback of the benchmark's baselines) and is listed as failed, with the reason, in the log and the JSON.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from d2sfm.io.atomic import write_text_atomic
from d2sfm.localization.pose_scores import PoseScores, score_poses
from d2sfm.localization.poses import Pose, read_poses, write_poses

log = logging.getLogger("d2sfm")


@dataclass
class QueryOutcome:
    name: str  # as in the dataset (relative path)
    localized: bool
    pose: Pose | None
    matches: int
    inliers: int
    seconds: float
    fallback_image: str | None = None  # database image whose pose was submitted instead
    reason: str = ""
    details: dict = field(default_factory=dict)


def submission_name(name: str) -> str:
    """The benchmarks identify queries by file name only (``query/night/nexus5x/IMG_x.jpg`` -> ``IMG_x.jpg``)."""
    return name.split("/")[-1]


def finish_localization(outcomes: list[QueryOutcome], submission_path: Path, summary_path: Path,
                        ground_truth: Path | None, thresholds: list[tuple[float, float]],
                        extra: dict | None = None) -> PoseScores | None:
    """Write the submission and the summary, print the failures, and score against ``ground_truth`` if given."""
    lines = [(submission_name(o.name), o.pose) for o in outcomes if o.pose is not None]
    write_poses(submission_path, lines)
    failed = [o for o in outcomes if not o.localized]
    unanswered = [o.name for o in outcomes if o.pose is None]
    log.info(f"wrote {submission_path}: {len(outcomes) - len(failed)} of {len(outcomes)} queries localized")
    for outcome in failed:
        fallback = f"; submitted the pose of {outcome.fallback_image}" if outcome.fallback_image else ""
        log.info(f"  failed: {outcome.name}: {outcome.reason}{fallback}")
    for name in unanswered:
        log.info(f"  no pose at all for {name}: it matched no database image")
    scores = None
    if ground_truth is not None:
        scores = score_poses(read_poses(ground_truth, required=True), read_poses(submission_path), thresholds)
        log.info(f"scores against {ground_truth}:\n{scores.table()}")
    summary = {
        **(extra or {}),
        "queries": len(outcomes), "localized": len(outcomes) - len(failed),
        "failed": [{"name": o.name, "reason": o.reason, "fallback_image": o.fallback_image} for o in failed],
        "unanswered": unanswered,
        "per_query": [{k: v for k, v in asdict(o).items() if k != "pose"} for o in outcomes],
        "scores": scores.as_dict() if scores else None,
    }
    write_text_atomic(summary_path, json.dumps(summary, indent=2))
    log.info(f"wrote {summary_path}")
    return scores


def ground_truth_if_present(path: str | os.PathLike) -> Path | None:
    path = Path(path)
    return path if path.is_file() else None
