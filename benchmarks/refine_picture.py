"""The before/after picture of keypoint refinement, on the synthetic scene whose geometry is known exactly.

    python benchmarks/refine_picture.py            # writes docs/img/refine_before_after.png, prints the figures

The demo scene is rendered and reconstructed twice (``--no-refine`` and the default refinement). In each verified
match whose first keypoint was held still (the track's anchor, which the others align to), the true geometry puts
that keypoint at one exact position in the other image; the picture shows, on an enlarged crop, the detected
keypoint (red ring), the refined one (green dot) and that true position (white cross), and beside it every such
match's offset from its true position before (red) and after (green). Everything is drawn from images the
project renders itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pycolmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, WEIGHTS  # noqa: E402
from d2sfm.io.h5 import read_keypoints
from d2sfm.refinement.database_refinement import read_database_keypoints
from d2sfm.refinement.patch_alignment import anchors_and_maps  # noqa: E402
from d2sfm.refinement.tracks import build_tracks, read_verified_matches  # noqa: E402
from d2sfm.synthetic.scene import courtyard, render_scene, transfer_to_view  # noqa: E402
from d2sfm.viz.drawing import write_png

ZOOM = 8  # crop enlargement
CROP = (72, 54)  # crop size in image pixels (width, height)
SPAN = 3.0  # the offset panel shows +-SPAN pixels


def reconstruct(scene: Path, weights: Path, *extra: str) -> None:
    command = [sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--demo", "--quiet", "--weights", str(weights),
               *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def anchored_offsets(scene: Path, raw_scene: Path) -> list[dict]:
    """Per verified pair (a, b), the matches whose keypoint in a is its track's anchor (which the refinement holds
    still): where the truth puts that keypoint in b, and b's keypoint before and after refinement."""
    names, refined = read_database_keypoints(scene / "database.db")
    detected = {image_id: read_keypoints(raw_scene / "features.h5", name)[0] for image_id, name in names.items()}
    truth = pycolmap.Reconstruction(scene / "ground_truth")
    by_name = {image.name: image for image in truth.images.values()}
    planes = courtyard(0)
    verified = read_verified_matches(scene / "database.db")
    tracks = build_tracks(verified)  # the anchors as the refinement chose them (no image is fixed here)
    anchors, _ = anchors_and_maps(tracks, np.tile(np.eye(2), (len(tracks.edges), 1, 1)),
                                  np.zeros(len(tracks.track_ids), bool))
    is_anchor = {(int(image_id), int(keypoint_id)) for image_id, keypoint_id
                 in zip(tracks.image_ids[anchors], tracks.keypoint_ids[anchors])}
    rows = []
    for (a, b), pairs in verified.items():
        for (source, index_s), (target, index_t) in (((a, 0), (b, 1)), ((b, 1), (a, 0))):
            held = np.array([(source, int(k)) in is_anchor for k in pairs[:, index_s]], bool)
            chosen = pairs[held]
            true_xy, visible = transfer_to_view(planes, truth, by_name[names[source]], by_name[names[target]],
                                                detected[source][chosen[:, index_s]])
            chosen = chosen[visible]
            rows.append({"target": names[target], "true": true_xy[visible],
                         "before": detected[target][chosen[:, index_t]],
                         "after": refined[target][chosen[:, index_t], :2]})
    return rows


def densest_crop(points: np.ndarray, size: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the crop (inside the image) that holds the most points."""
    width, height = size
    best, corner = -1, (0, 0)
    for x0 in range(0, shape[1] - width + 1, 8):
        for y0 in range(0, shape[0] - height + 1, 8):
            count = int(((points[:, 0] >= x0) & (points[:, 0] < x0 + width)
                         & (points[:, 1] >= y0) & (points[:, 1] < y0 + height)).sum())
            if count > best:
                best, corner = count, (x0, y0)
    return corner


def to_canvas(xy: np.ndarray, corner: tuple[int, int]) -> list[tuple[int, int]]:
    """COLMAP pixel coordinates (centres at +0.5) -> enlarged-crop coordinates (cv2 fixed point, 4 bits)."""
    return [(int(round(x * 16)), int(round(y * 16))) for x, y in (xy - np.array(corner)) * ZOOM]


def crop_panel(image: np.ndarray, row: dict, corner: tuple[int, int]) -> np.ndarray:
    x0, y0 = corner
    crop = image[y0: y0 + CROP[1], x0: x0 + CROP[0]]
    canvas = cv2.resize(crop, (CROP[0] * ZOOM, CROP[1] * ZOOM), interpolation=cv2.INTER_NEAREST)
    canvas = (0.75 * canvas + 0.25 * 128).astype(np.uint8)  # dimmed, so that the marks stand out
    inside = (((row["true"] >= corner) & (row["true"] < np.array(corner) + CROP)).all(1)
              & (np.linalg.norm(row["before"] - row["true"], axis=1) < SPAN))  # wrong matches would only clutter
    for true, before, after in zip(*(to_canvas(row[key][inside], corner) for key in ("true", "before", "after"))):
        cv2.line(canvas, before, after, (255, 255, 255), 1, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, before, 7 << 4, (40, 40, 230), 2, cv2.LINE_AA, shift=4)
        for dx, dy in ((1, 1), (1, -1)):
            cv2.line(canvas, (true[0] - dx * 96, true[1] - dy * 96), (true[0] + dx * 96, true[1] + dy * 96),
                     (255, 255, 255), 2, cv2.LINE_AA, shift=4)
        cv2.circle(canvas, after, 4 << 4, (60, 220, 60), -1, cv2.LINE_AA, shift=4)  # on top: it sits on the cross
    return canvas


def offset_panel(offsets: np.ndarray, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """Offsets from the true positions within +-SPAN px, a 1-px grid and a circle at the median distance."""
    canvas = np.full((size, size, 3), 255, np.uint8)
    scale = size / (2 * SPAN)
    for tick in np.arange(-SPAN, SPAN + 1e-9, 1.0):
        position = int(round((tick + SPAN) * scale))
        grey = (120, 120, 120) if tick == 0 else (220, 220, 220)
        cv2.line(canvas, (position, 0), (position, size), grey, 1)
        cv2.line(canvas, (0, position), (size, position), grey, 1)
    shown = offsets[(np.abs(offsets) < SPAN).all(1)]
    for x, y in np.round((shown + SPAN) * scale * 16).astype(int):
        cv2.circle(canvas, (int(x), int(y)), 2 << 4, colour, -1, cv2.LINE_AA, shift=4)
    median = float(np.median(np.linalg.norm(offsets, axis=1)))
    cv2.circle(canvas, (size // 2, size // 2), int(round(median * scale)), (0, 0, 0), 2, cv2.LINE_AA)
    return canvas


def caption(canvas: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    strip = np.full((26 * len(lines) + 10, canvas.shape[1], 3), 255, np.uint8)
    for index, (text, colour) in enumerate(lines):
        cv2.putText(strip, text, (10, 26 * index + 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 1, cv2.LINE_AA)
    return np.concatenate([canvas, strip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "img" / "refine_before_after.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        raw_scene, scene = Path(work) / "raw", Path(work) / "refined"
        render_scene(raw_scene, count=8, width=640, height=480, focal=512.0)
        reconstruct(raw_scene, args.weights, "--no-refine")
        shutil.copytree(raw_scene, scene)
        reconstruct(scene, args.weights)
        rows = anchored_offsets(scene, raw_scene)
        before = np.concatenate([row["before"] - row["true"] for row in rows])
        after = np.concatenate([row["after"] - row["true"] for row in rows])
        shown = max(rows, key=lambda row: len(row["true"]))
        image = cv2.imread(str(scene / "images" / shown["target"]))
        corner = densest_crop(shown["true"], CROP, image.shape[:2])
        left = crop_panel(image, shown, corner)
        gap = np.full((left.shape[0], 12, 3), 255, np.uint8)
        panels = [left, gap, offset_panel(before, (40, 40, 230), left.shape[0]), gap,
                  offset_panel(after, (40, 170, 40), left.shape[0])]
        error_before, error_after = (np.median(np.linalg.norm(v, axis=1)) for v in (before, after))
        picture = caption(np.concatenate(panels, axis=1), [
            (f"left: {CROP[0]}x{CROP[1]} px of {shown['target']} (x{ZOOM}); x = true position, red ring = detected "
             "keypoint, green dot = refined", (0, 0, 0)),
            (f"middle, right: offset from the true position of {len(before)} matches, +-{SPAN:g} px with a 1-px grid, "
             f"circle at the median: {error_before:.2f} px detected (red), {error_after:.2f} px refined (green)",
             (0, 0, 0))])
        write_png(args.output, picture)
    print(f"Keypoint refinement (patch alignment, the default) on the synthetic scene (8 views, 640x480, "
          f"multi-scale): {len(before)} verified matches whose first keypoint was its track's anchor; median "
          f"distance of the other keypoint to where the true geometry puts it: **{error_before:.2f} px detected, "
          f"{error_after:.2f} px refined** ({100 * (error_after / error_before - 1):+.0f}%). "
          f"Command: `python -m benchmarks --only refine-picture`.\n")
    print(f"![Before and after refinement]({Path(os.path.relpath(args.output, REPO / 'docs')).as_posix()})")


if __name__ == "__main__":
    main()
