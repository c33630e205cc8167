"""``python -m d2sfm.localize aachen|inloc --dataset DIR``: localize a benchmark's queries with D2 features and
write its submission file (and score it when the dataset folder holds a ground truth). ``python -m d2sfm.localize
images --reference SCENE --queries DIR``: register new photos against any d2sfm reconstruction.

The benchmark protocols live in ``pipelines/`` (one module per benchmark); this command parses the options into
an AachenConfig or InLocConfig and calls ``d2sfm.localize``. Every stage writes under ``--output`` and is skipped on
a rerun once complete.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, loading_the_work, module_doc, run_main
from d2sfm.commands.library_logs import set_library_logs
from d2sfm.commands.options import (
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
    IMAGES_PAIRS,
    INLOC_CUTOUT_FOCAL,
    AachenConfig,
    ImagesLocalizationConfig,
    InLocConfig,
    RefineConfig,
)
from d2sfm.sfm.defaults import CAMERA_MODELS


def add_aachen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", choices=["1.0", "1.1"], default="1.0", help="dataset version (default 1.0)")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="retrieval variant: query-database pairs (e.g. hloc's pairs-query-netvlad50.txt) for "
                        "the --queries sets instead of the protocol's query pairs")
    parser.add_argument("--queries", default="night",
                        help="with --pairs: query sets to localize, comma-separated from day,night (default night, "
                        "the protocol's)")
    parser.add_argument("--db-pairs", type=Path, default=None,
                        help="with --pairs: database pairs to triangulate from (default: those of the protocol's "
                        "image_pairs_to_match file)")
    parser.add_argument("--min-inliers", type=number(int, at_least=1), default=30,
                        help="2D-3D inliers a query needs to register (default 30, COLMAP's and the protocol's; the "
                        "D2-Net authors relaxed it for D2 on Extended CMU Seasons, see datasets/aachen.md)")
    parser.add_argument("--min-inlier-ratio", type=number(float, at_least=0, at_most=1), default=0.25,
                        help="inlier ratio a query needs to register (default 0.25, COLMAP's)")
    add_refine_argument(parser, "the database images' tracks, then each query's keypoints against the fixed "
                        "database keypoints,")
    parser.add_argument("--refine-query-intrinsics", action="store_true",
                        help="let registration estimate and refine the queries' focal length and distortion as "
                        "COLMAP's registrator does for cameras without a prior (default: fixed, as the protocol asks)")


def add_inloc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=Path, default=None,
                        help="query-cutout retrieval pairs, best first per query (default "
                        "DATASET/pairs/pairs-query-netvlad40.txt)")
    parser.add_argument("--top-k", type=number(int, at_least=1), default=40,
                        help="cutouts per query taken from the pairs (default 40)")
    parser.add_argument("--ransac-max-error", type=number(float, above=0), default=None,
                        help="absolute pose RANSAC threshold in query pixels (default: 48 px for a 4032 px wide "
                        "query, as hloc uses for InLoc, scaled with the query's width)")
    parser.add_argument("--min-inliers", type=number(int, at_least=1), default=30,
                        help="fewer inliers than this counts as not localized (default 30, COLMAP's registration "
                        "threshold, as for Aachen: random matches on a textureless query reach a dozen inliers)")
    parser.add_argument("--cutout-focal", type=number(float, above=0), default=INLOC_CUTOUT_FOCAL,
                        help="cutout focal length in pixels, used only for the fallback pose of a failed query")
    add_refine_argument(parser, "each query's keypoints (against its retrieved cutouts', which stay fixed: their "
                        "3D points come from the scans)", written_to="refined_queries.h5")


BENCHMARK_ARGUMENTS = {"aachen": add_aachen_arguments, "inloc": add_inloc_arguments}


def localization_config(args: argparse.Namespace) -> AachenConfig | InLocConfig:
    common = {"features": feature_config(args), "matching": match_config(args),
              "refine": RefineConfig(args.refine, args.refine_method), "run": run_config(args),
              "min_inliers": args.min_inliers}
    if args.benchmark == "aachen":
        return AachenConfig(version=args.version, pairs=args.pairs, queries=args.queries, db_pairs=args.db_pairs,
                            min_inlier_ratio=args.min_inlier_ratio,
                            refine_query_intrinsics=args.refine_query_intrinsics, **common)
    return InLocConfig(pairs=args.pairs, top_k=args.top_k, ransac_max_error=args.ransac_max_error,
                       cutout_focal=args.cutout_focal, **common)


def build_parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].replace("``", "")
    parser = CommandParser(prog="python -m d2sfm.localize", description=summary)
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, add_arguments in BENCHMARK_ARGUMENTS.items():  # the protocols, one module each in pipelines/
        doc = module_doc(f"pipelines.{name}")
        sub = commands.add_parser(name, help=doc.split("\n")[0], description=doc.replace("``", ""),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--dataset", type=Path, required=True,
                         help=f"the dataset folder (layout: datasets/{name}.md)")
        sub.add_argument("--output", type=Path, default=None,
                         help=f"working and result folder (default outputs/{name}...)")
        add_arguments(sub)
        add_weights_argument(sub)
        add_device_argument(sub)
        add_feature_arguments(sub)
        add_match_arguments(sub)
        add_run_arguments(sub, "delete --output first and redo every stage")
    add_images_command(commands)
    return parser


def add_images_command(commands) -> None:
    sub = commands.add_parser("images", help="register new photos against any d2sfm reconstruction",
                              description=module_doc("d2sfm.pipeline.localize_images").replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.add_argument("--reference", type=Path, required=True,
                     help="a scene folder reconstructed by d2sfm (features.h5, sparse/0); read, never written")
    sub.add_argument("--queries", type=Path, required=True, help="folder of the photos to localize")
    sub.add_argument("--output", type=Path, default=None,
                     help="working and result folder: poses.txt, summary.json (default QUERIES/../localization)")
    sub.add_argument("--gt", type=Path, default=None,
                     help="true cameras of the queries (Strecha .camera files or a COLMAP model, in the reference "
                     "model's frame): score the poses at --thresholds")
    sub.add_argument("--pairs", choices=IMAGES_PAIRS, default="auto",
                     help="reference images matched per query: all (exhaustive), the --top-k most similar by global "
                     "descriptor (retrieval), or auto (exhaustive up to 100 reference images)")
    sub.add_argument("--top-k", type=number(int, at_least=1), default=20, help="retrieval: images per query")
    sub.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL",
                     help="the queries' COLMAP camera model")
    sub.add_argument("--camera-params", default="",
                     help="the queries' known intrinsics in the model's COLMAP order (default: EXIF or COLMAP's "
                     "guess, focal length estimated with the pose)")
    sub.add_argument("--ransac-max-error", type=number(float, above=0), default=12.0,
                     help="absolute pose RANSAC threshold in query pixels (default 12, COLMAP's)")
    sub.add_argument("--min-inliers", type=number(int, at_least=4), default=15,
                     help="2D-3D inliers a query needs to count as localized (default 15)")
    sub.add_argument("--thresholds", default="0.01,0.1;0.05,0.5;0.1,1",
                     help="--gt: 'position,degrees;...' in the model's units (default 1 cm/0.1 deg, 5 cm/0.5 deg, "
                     "10 cm/1 deg for a model in metres)")
    sub.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                     help="align each query keypoint matched to a 3D point's observation to that observation's "
                     "patch in its reference photo, as the reference's keypoints were refined (default: on)")
    sub.add_argument("--reference-images", type=Path, default=None,
                     help="the reference scene's photos, for --refine (default: REFERENCE/images)")
    add_weights_argument(sub)
    add_device_argument(sub)
    add_feature_arguments(sub)
    add_match_arguments(sub)
    add_run_arguments(sub, "delete --output first and redo every stage")


def images_config(args: argparse.Namespace) -> ImagesLocalizationConfig:
    return ImagesLocalizationConfig(
        pairs=args.pairs, top_k=args.top_k, camera_model=args.camera_model, camera_params=args.camera_params,
        ransac_max_error=args.ransac_max_error, min_inliers=args.min_inliers, thresholds=args.thresholds,
        refine=args.refine, reference_images=str(args.reference_images or ""), features=feature_config(args),
        matching=match_config(args), run=run_config(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_library_logs(args.verbose)
    images = args.benchmark == "images"
    config = images_config(args) if images else localization_config(args)
    with loading_the_work():  # the work's imports (torch, pycolmap): after the options
        from d2sfm.api import localize, localize_images

    if images:
        localize_images(args.reference, args.queries, config, output=args.output, gt=args.gt)
    else:
        localize(args.benchmark, args.dataset, config, output=args.output)
    return 0


if __name__ == "__main__":
    run_main(main)
