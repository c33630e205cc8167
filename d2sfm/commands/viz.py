"""Pictures as PNG, for reports and for checking results by eye.

``python -m d2sfm.viz pair IMAGE0 IMAGE1 -o pair.png`` extracts D2 features from both images, matches them by mutual
nearest neighbours and draws the matches side by side (plus each image's keypoints); ``pair`` may be left out.
``python -m d2sfm.viz model SCENE/sparse/0 -o model.png`` draws any COLMAP model: points, cameras and match graph.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from d2sfm.commands.cli import (
    CommandParser,
    add_device_argument,
    add_weights_argument,
    number,
    resolve_device,
    run_main,
)
from d2sfm.errors import D2sfmError
from d2sfm.features.pyramid import MULTI_SCALE, SINGLE_SCALE
from d2sfm.io.atomic import atomic_path
from d2sfm.io.keypoints import colmap_xy_to_opencv_xy


def write_png(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Encode and write atomically; returns the path."""
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise D2sfmError(f"{path}: could not encode the picture as PNG")
    with atomic_path(path) as temporary:
        temporary.write_bytes(encoded.tobytes())
    return Path(path)


def _colours(values: np.ndarray) -> np.ndarray:
    """Turbo colours for values in [0, 1] -> (N, 3) BGR uint8."""
    scaled = np.clip(np.round(np.asarray(values, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(scaled.reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)


def _to_pixel(xy: np.ndarray, scale: float, shift: int = 4) -> np.ndarray:
    """COLMAP-convention (x, y) -> fixed-point pixel centres for cv2 (which puts pixel centres at integers)."""
    return np.round(colmap_xy_to_opencv_xy(xy * scale) * (1 << shift)).astype(np.int64)


def draw_keypoints(image_bgr: np.ndarray, keypoints_xy: np.ndarray, scores: np.ndarray | None = None,
                   radius: int | None = None) -> np.ndarray:
    """Keypoints as dots coloured by score rank (blue = weak, red = strong), sized to stay visible."""
    canvas = image_bgr.copy()
    radius = radius or max(2, round(max(image_bgr.shape[:2]) / 320))
    order = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1) if scores is not None and len(scores) else None
    colours = _colours(order) if order is not None else np.tile([[0, 255, 0]], (len(keypoints_xy), 1))
    for (x, y), colour in zip(_to_pixel(keypoints_xy, 1.0), colours):
        cv2.circle(canvas, (int(x), int(y)), radius << 4, tuple(int(c) for c in colour), -1, cv2.LINE_AA, shift=4)
    return canvas


def draw_matches(image0: np.ndarray, image1: np.ndarray, keypoints0: np.ndarray, keypoints1: np.ndarray,
                 matches: np.ndarray, inliers: np.ndarray | None = None, height: int = 480,
                 max_lines: int = 2000, seed: int = 0) -> np.ndarray:
    """Both images side by side at a common height with one line per match (green/red for inliers/outliers
    when ``inliers`` is given, otherwise coloured by vertical position so crossings stand out)."""
    scales = [height / image.shape[0] for image in (image0, image1)]
    resized = [cv2.resize(image, (max(1, round(image.shape[1] * s)), height), interpolation=cv2.INTER_AREA)
               for image, s in zip((image0, image1), scales)]
    gap = 8
    canvas = np.full((height, resized[0].shape[1] + gap + resized[1].shape[1], 3), 255, np.uint8)
    canvas[:, : resized[0].shape[1]] = resized[0]
    offset = resized[0].shape[1] + gap
    canvas[:, offset:] = resized[1]
    matches = np.asarray(matches).reshape(-1, 2)
    if len(matches) > max_lines:
        keep = np.sort(np.random.default_rng(seed).choice(len(matches), max_lines, replace=False))
        matches = matches[keep]
        inliers = inliers[keep] if inliers is not None else None
    points0 = _to_pixel(keypoints0[matches[:, 0]], scales[0])
    points1 = _to_pixel(keypoints1[matches[:, 1]], scales[1]) + np.array([offset << 4, 0])
    if inliers is not None:
        colours = np.where(np.asarray(inliers)[:, None], [[0, 200, 0]], [[0, 0, 230]])
    else:
        colours = _colours(points0[:, 1] / max(height << 4, 1))
    for p0, p1, colour in zip(points0, points1, colours):
        colour = tuple(int(c) for c in colour)
        cv2.line(canvas, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, 1, cv2.LINE_AA, shift=4)
        for point in (p0, p1):
            cv2.circle(canvas, tuple(int(v) for v in point), 2 << 4, colour, -1, cv2.LINE_AA, shift=4)
    return canvas


COMMANDS = ("pair", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.viz", description="Pictures of features and models (PNG).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pair,model}")
    pair = commands.add_parser(
        "pair", help="D2 matches between two images",
        description="Extract D2 features from two images, match them by mutual nearest neighbours and draw the "
        "matches side by side (PNG), plus each image's keypoints next to it.")
    pair.add_argument("image0", type=Path)
    pair.add_argument("image1", type=Path)
    pair.add_argument("--output", "-o", type=Path, default=Path("matches.png"),
                      help="matches picture; keypoint pictures go beside it as <stem>_kpts0.png, _kpts1.png")
    add_weights_argument(pair)
    add_device_argument(pair)
    pair.add_argument("--multiscale", action="store_true", help="multi-scale extraction (0.5, 1, 2)")
    pair.add_argument("--max-edge", type=number(int, at_least=16), default=1600,
                      help="network input size limit (default 1600)")
    pair.add_argument("--height", type=number(int, at_least=16), default=480, help="height of the drawn pair in pixels")
    model = commands.add_parser(
        "model", help="a COLMAP model: points, cameras and match graph",
        description="Draw a COLMAP model (binary or text folder): its points in their colours and its cameras, seen "
        "from behind and above the cameras, beside the match graph (verified inliers from the COLMAP database "
        "when there is one, else the 3D points each pair of images shares).")
    model.add_argument("model", type=Path, help="model folder, e.g. SCENE/sparse/0")
    model.add_argument("--output", "-o", type=Path, default=Path("model.png"))
    model.add_argument("--database", type=Path, default=None,
                       help="COLMAP database for the match graph (default: MODEL/../../database.db when it exists)")
    model.add_argument("--height", type=number(int, at_least=16), default=750,
                       help="picture height in pixels (default 750)")
    return parser


def write_model_picture(model_dir: Path, output: Path, database: Path | None = None,
                        all_names: Sequence[str] = (), height: int = 750) -> Path:
    """Read a COLMAP model and write its picture (d2sfm.model_picture)."""
    from d2sfm.io.model_files import read_model
    from d2sfm.viz.model_picture import model_picture

    if not ((model_dir / "images.bin").is_file() or (model_dir / "images.txt").is_file()):
        raise D2sfmError(f"{model_dir}: not a COLMAP model (no images.bin or images.txt); give a model folder "
                         "such as SCENE/sparse/0")
    database = database or (model_dir.parent.parent / "database.db")
    picture = model_picture(read_model(model_dir), database if database.is_file() else None,
                            list(all_names), height)
    return write_png(output, picture)


def draw_pair(args: argparse.Namespace) -> None:
    from d2sfm.commands.match import mutual_nearest_neighbours
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig
    from d2sfm.features.weights import resolve_weights
    from d2sfm.io.images import read_image_bgr

    images = [read_image_bgr(args.image0), read_image_bgr(args.image1)]
    config = ExtractionConfig(scales=MULTI_SCALE if args.multiscale else SINGLE_SCALE, max_edge=args.max_edge)
    extractor = D2Extractor(resolve_weights(args.weights), config, resolve_device(args.device))
    features = [extractor.extract(image) for image in images]
    matches = mutual_nearest_neighbours(*(torch.from_numpy(f.descriptors) for f in features))[0].numpy()
    write_png(args.output, draw_matches(*images, features[0].keypoints, features[1].keypoints, matches,
                                        height=args.height))
    for index, (image, f) in enumerate(zip(images, features)):
        write_png(args.output.with_name(f"{args.output.stem}_kpts{index}.png"),
                  draw_keypoints(image, f.keypoints, f.scores))
    counts = ", ".join(str(len(f.keypoints)) for f in features)
    print(f"wrote {args.output}: {len(matches)} mutual matches between {counts} keypoints")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "pair")  # the original form: python -m d2sfm.viz IMAGE0 IMAGE1
    args = build_parser().parse_args(argv)
    if args.command == "pair":
        draw_pair(args)
    else:
        path = write_model_picture(args.model, args.output, args.database, height=args.height)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_main(main)
