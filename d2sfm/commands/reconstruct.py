"""``python -m d2sfm.reconstruct scene/``: photos to a COLMAP model with D2-Net features.

Stages, each writing under ``scene/`` and skipped on a rerun once its output is complete (``--overwrite`` redoes
them): features.h5 (extraction), pairs.txt, matches.h5, database.db (cameras, keypoints, matches, geometric
verification), sparse/ (mapping), model.png (a picture of the largest model and the match graph), dense/
(``--dense``), and stats.json with the ETH benchmark's statistics and the time of each stage. ``--demo`` first
renders the embedded synthetic scene into ``scene/`` and finally checks the recovered cameras against the true
ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.library_logs import set_library_logs
from d2sfm.commands.options import (
    add_complete_tracks_argument,
    add_device_argument,
    add_feature_arguments,
    add_match_arguments,
    add_refine_argument,
    add_run_arguments,
    add_weights_argument,
    feature_config,
    match_config,
    number,
    run_config,
)
from d2sfm.config import (
    DenseConfig,
    MappingConfig,
    PairsConfig,
    ReconstructionConfig,
    RefineConfig,
)
from d2sfm.errors import D2sfmError
from d2sfm.matching.pairs import EXHAUSTIVE_UP_TO
from d2sfm.sfm.defaults import (
    CAMERA_MODELS,
    CAMERA_MODES,
    D2_ABS_POSE_MIN_INLIER_RATIO,
    D2_ABS_POSE_MIN_INLIERS,
    D2_INIT_MIN_TRI_ANGLE,
    DEFAULT_MESH_TRIM,
    INTRINSICS_REFINEMENTS,
    MAPPERS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m d2sfm.reconstruct",
        description="Reconstruct a scene from photos with D2-Net features and pycolmap: reads scene/images/ and "
        "writes features.h5, pairs.txt, matches.h5, database.db, sparse/, dense/ and stats.json under scene/. "
        "Finished stages are skipped on a rerun.",
    )
    parser.add_argument("scene", type=Path, help="scene folder (photos in scene/images/ unless --images)")
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default: scene/images)")
    parser.add_argument("--features", type=Path, default=None,
                        help="use this features file instead of extracting: d2sfm's, or hloc's (recognised from its "
                        "attributes; keypoints with pixel centres at integers, descriptors D x N); it must hold "
                        "every image")
    parser.add_argument("--demo", action="store_true",
                        help="render the embedded synthetic scene into scene/ first (no download needed) and "
                        "check the recovered cameras against the truth at the end")
    add_weights_argument(parser)
    add_device_argument(parser)
    add_feature_arguments(parser)
    parser.add_argument("--pairs", default="auto",
                        help="'exhaustive', 'sequential', 'retrieval', a pair-list file, or 'auto' (exhaustive up "
                        f"to {EXHAUSTIVE_UP_TO} images, else retrieval)")
    parser.add_argument("--top-k", type=number(int, at_least=1), default=20,
                        help="retrieval: pairs per image (default 20)")
    parser.add_argument("--overlap", type=number(int, at_least=1), default=10,
                        help="sequential: next N images (default 10)")
    add_match_arguments(parser)
    parser.add_argument("--camera-mode", choices=CAMERA_MODES, default=None,
                        help="auto (COLMAP's default: per camera and size), single, per-image, per-folder "
                        "(default: auto; single with --demo, whose images come from one camera)")
    parser.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL",
                        help="COLMAP camera model of every camera (default SIMPLE_RADIAL, COLMAP's: focal, principal "
                        "point, one radial term)")
    parser.add_argument("--camera-params", default="",
                        help="known intrinsics of every photo, in the camera model's COLMAP order: fx,fy,cx,cy for "
                        "PINHOLE, f,cx,cy,k for SIMPLE_RADIAL (default: the EXIF focal or COLMAP's guess, principal "
                        "point at the centre)")
    parser.add_argument("--known-poses", default="", metavar="TRUE_CAMERAS",
                        help="triangulate at these poses instead of mapping (a folder of Strecha .camera files or a "
                        "COLMAP model; photos matched by name): the model in their frame, the intrinsics as the "
                        "database holds them")
    parser.add_argument("--refine-intrinsics", choices=INTRINSICS_REFINEMENTS, default="colmap",
                        help="camera parameters bundle adjustment may change: none (a known calibration), focal, "
                        "all, or colmap (default, COLMAP's: focal and distortion, principal point held)")
    add_refine_argument(parser, "the keypoints of each track (before mapping), then each 3D point's observations "
                        "(after mapping, then bundle adjustment),")
    add_complete_tracks_argument(parser)
    parser.add_argument("--mapper", choices=MAPPERS, default="incremental",
                        help="incremental (default: COLMAP's, image by image, each pose checked by 2D-3D RANSAC) or "
                        "global (pycolmap's global mapper: rotation and translation averaging, faster on large "
                        "scenes)")
    parser.add_argument("--abs-pose-min-inliers", type=number(int, at_least=1), default=D2_ABS_POSE_MIN_INLIERS,
                        help=f"inliers needed to register an image (default {D2_ABS_POSE_MIN_INLIERS}; COLMAP's "
                        "default 30 leaves D2 images out, see docs/benchmarks.md)")
    parser.add_argument("--abs-pose-min-inlier-ratio", type=number(float, at_least=0, at_most=1),
                        default=D2_ABS_POSE_MIN_INLIER_RATIO,
                        help=f"inlier ratio needed to register an image (default {D2_ABS_POSE_MIN_INLIER_RATIO}; "
                        "COLMAP's 0.25)")
    parser.add_argument("--init-min-tri-angle", type=number(float, above=0, at_most=180), default=D2_INIT_MIN_TRI_ANGLE,
                        help=f"triangulation angle (degrees) the initial pair needs (default {D2_INIT_MIN_TRI_ANGLE}; "
                        "COLMAP's 16)")
    parser.add_argument("--mapper-attempts", type=number(int, at_least=1), default=2,
                        help="incremental mapping runs at most (default 2): a run whose largest model holds under "
                        "90%% of the images, gave 3D points to under 15%% of its images' verified keypoints, or left "
                        "out an image with 100+ verified matches to it is repeated with the next seed and the best "
                        "kept; 1 for huge collections")
    parser.add_argument("--min-model-size", type=number(int, at_least=2), default=3,
                        help="smallest model kept (images)")
    parser.add_argument("--text", action="store_true", help="write models as COLMAP text instead of binary")
    parser.add_argument("--dense", action="store_true",
                        help="also run MVS into dense/ (PatchMatch needs pycolmap with CUDA: README 'Dense MVS'); "
                        "an interrupted run resumes from dense.part/ without recomputing finished depth maps")
    parser.add_argument("--dense-size", type=number(int, at_least=64), default=2000,
                        help="with --dense: longest side of the images PatchMatch works on (default 2000)")
    parser.add_argument("--mesh", action="store_true", help="with --dense: Poisson mesh of the fused points")
    parser.add_argument("--mesh-trim", type=number(float, at_least=0), default=DEFAULT_MESH_TRIM,
                        help=f"with --mesh: drop the surface where the points are sparser than this Poisson density "
                        f"(default {DEFAULT_MESH_TRIM:g}, COLMAP's; 0 keeps everything)")
    add_run_arguments(parser)
    return parser


def reconstruction_config(args: argparse.Namespace) -> ReconstructionConfig:
    return ReconstructionConfig(
        features=feature_config(args), run=run_config(args),
        pairs=PairsConfig(method=args.pairs, top_k=args.top_k, overlap=args.overlap),
        matching=match_config(args),
        refine=RefineConfig(enabled=args.refine, method=args.refine_method, complete_tracks=args.complete_tracks),
        mapping=MappingConfig(camera_mode=args.camera_mode, camera_model=args.camera_model,
                              camera_params=args.camera_params, refine_intrinsics=args.refine_intrinsics,
                              known_poses=args.known_poses,
                              mapper=args.mapper,
                              abs_pose_min_inliers=args.abs_pose_min_inliers,
                              abs_pose_min_inlier_ratio=args.abs_pose_min_inlier_ratio,
                              init_min_tri_angle=args.init_min_tri_angle, attempts=args.mapper_attempts,
                              min_model_size=args.min_model_size, text=args.text),
        dense=DenseConfig(enabled=args.dense, max_image_size=args.dense_size, mesh=args.mesh, mesh_trim=args.mesh_trim))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mesh and not args.dense:
        raise D2sfmError("--mesh meshes the dense points: add --dense")
    set_library_logs(args.verbose)
    config = reconstruction_config(args)
    with loading_the_work():  # the work's imports (torch, pycolmap): after the options
        from d2sfm.pipeline.reconstruct import reconstruct_scene

    reconstruct_scene(args.scene, config, images=args.images, features=args.features, demo=args.demo)
    return 0


if __name__ == "__main__":
    run_main(main)
