"""Why refinement aligns image patches rather than comparing feature vectors: each method's optimum under a known
change of view, on a real photo.

    python benchmarks/refine_invariance.py            # ../shared/data/sacre_coeur, one photo, CPU

The photo's D2 keypoints are matched to a copy of the photo warped by a known homography (scale, rotation, a
little perspective, optionally a change of exposure and colour), whose true positions are known exactly. Each
match's warped keypoint starts at the truth, or 1.5 px from it in a random direction, and is refined against the
fixed original keypoint (2-keypoint tracks) by the featuremetric adjustment (``--refine-method featuremetric``)
or by the patch alignment (the default). The table gives its final distance to the truth: with no change of
view the features lead back to it; under a change of scale and rotation their optimum itself moves away from it,
because the early VGG features are not invariant to it, while the patch alignment models the change of view
(its affinity starts from the neighbouring matches, as in a real run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402
from benchmarks.sfm_vs_sift import d2sfm_features  # noqa: E402

WARPS = (  # (label, scale, rotation in degrees, perspective, photometric change)
    ("none", 1.0, 0, 0.0, False),
    ("scale 0.8, 10 deg", 0.8, 10, 2e-4, False),
    ("scale 0.6, 15 deg", 0.6, 15, 3e-4, False),
    ("scale 0.8, 10 deg, exposure and colour", 0.8, 10, 2e-4, True),
)


def homography(size: tuple[int, int], scale: float, degrees: float, perspective: float) -> np.ndarray:
    width, height = size
    to_centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1]])
    angle = np.radians(degrees)
    warp = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0],
                     [scale * np.sin(angle), scale * np.cos(angle), 0], [perspective, 0, 1]])
    return np.linalg.inv(to_centre) @ warp @ to_centre


def main() -> None:
    from d2sfm.io.h5 import read_keypoints
    from d2sfm.refinement.feature_patches import DenseFeatureNet, PatchSettings
    from d2sfm.refinement.keypoint_adjustment import adjust_keypoints

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path,
                        default=SACRE_COEUR / "71295362_4051449754.jpg")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--keypoints", type=int, default=1500, help="keypoints drawn from the photo's detections")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device("cpu")
    image = cv2.imread(str(args.image))
    height, width = image.shape[:2]
    with tempfile.TemporaryDirectory() as scratch:
        features = Path(scratch) / "features.h5"
        d2sfm_features(args.image.parent, [args.image.name], features, args.weights, (1.0,), True, device=device)
        detected = read_keypoints(features, args.image.name)[0][:, :2].astype(np.float64)
    rng = np.random.default_rng(0)
    detected = detected[rng.choice(len(detected), min(args.keypoints, len(detected)), replace=False)]
    nets = {layer: DenseFeatureNet(args.weights, PatchSettings(layer=layer), device)
            for layer in ("conv1_2", "conv2_2")}
    print(f"photo: {args.image.name} ({width}x{height}), weights {args.weights.name}, {len(detected)} D2 keypoints\n")
    print("| change of view | refinement (dense features) | start at the truth: final error median / 75% (px) "
          "| start 1.5 px off: final error median / 75% (px) |")
    print("| --- | --- | ---: | ---: |")
    for label, scale, degrees, perspective, photometric in WARPS:
        warp = homography((width, height), scale, degrees, perspective)
        warped = cv2.warpPerspective(image, warp, (width, height), flags=cv2.INTER_LINEAR)
        if photometric:
            warped = np.clip(255 * (warped / 255.0) ** 1.6 * 0.8 + [10, 0, -10], 0, 255).astype(np.uint8)
        truth = cv2.perspectiveTransform((detected - 0.5)[None], warp)[0] + 0.5  # COLMAP: centres at +0.5
        inside = ((truth > 10) & (truth < [width - 10, height - 10])).all(1)
        source, truth = detected[inside], truth[inside]
        cells = []
        for layer, net in nets.items():
            row = []
            for offset in (0.0, 1.5):
                direction = rng.normal(size=truth.shape)
                start = truth + offset * direction / np.linalg.norm(direction, axis=1, keepdims=True)
                fixed, moving = net.patches(image, source), net.patches(warped, start)
                count = len(source)
                patches = torch.stack([fixed.patches, moving.patches], 1).flatten(0, 1)
                centres = torch.stack([fixed.centres, moving.centres], 1).flatten(0, 1)
                edges = np.stack([np.arange(0, 2 * count, 2), np.arange(1, 2 * count, 2)], 1)
                shift, _ = adjust_keypoints(patches, centres, np.repeat(np.arange(count), 2), edges,
                                            fixed=np.tile([True, False], count))
                error = np.linalg.norm(start + shift.numpy()[1::2] * moving.pixel_factors - truth, axis=1)
                row.append(f"{np.median(error):.2f} / {np.percentile(error, 75):.2f}")
            cells.append((layer, row))
        row = []
        for offset in (0.0, 1.5):
            direction = rng.normal(size=truth.shape)
            start = truth + offset * direction / np.linalg.norm(direction, axis=1, keepdims=True)
            row.append(patch_alignment_errors(image, warped, source, start, truth))
        cells.append(("patch alignment (default)", row))
        for layer, row in cells:
            print(f"| {label} | {layer} | {row[0]} | {row[1]} |")


def patch_alignment_errors(image, warped, source, start, truth) -> str:
    """Median / 75% final error of ``--refine``'s patch alignment of the warped keypoints against the fixed
    originals, the local affinity taken from the neighbouring matches as in a real run (keypoints whose alignment
    fails keep their start, and count)."""
    from d2sfm.refinement.patch_alignment import AlignmentSettings, align_keypoints, edge_affinities
    from d2sfm.refinement.tracks import build_tracks

    order = np.arange(len(source))
    matches = {(1, 2): np.stack([order, order], axis=1)}
    keypoints = {1: source, 2: start}
    tracks = build_tracks(matches)
    xy = np.stack([keypoints[i][k] for i, k in zip(tracks.image_ids, tracks.keypoint_ids)])
    grays = {1: image, 2: warped}
    result = align_keypoints(tracks, xy, edge_affinities(matches, keypoints), tracks.image_ids == 1,
                             lambda i: cv2.cvtColor(grays[i], cv2.COLOR_BGR2GRAY).astype(np.float32) / 255,
                             AlignmentSettings(), torch.device("cpu"))
    own = tracks.image_ids == 2
    error = np.linalg.norm(result.positions[own] - truth[tracks.keypoint_ids[own]], axis=1)
    return f"{np.median(error):.2f} / {np.percentile(error, 75):.2f}"


if __name__ == "__main__":
    main()
