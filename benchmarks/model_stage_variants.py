"""The model refinement's settings against ground truth: each variant refines the same mapped model of each Strecha
scene, so the errors differ by the settings alone (a whole run maps anew, and the mapper's draw moves entry-P10's
median position error by 2 mm).

    python benchmarks/model_stage_variants.py --run outputs/gt default "no-cauchy first_cauchy_px=None" \\
        "gate-0.3 alignment.max_uncertainty=0.3" "filter-2px max_reprojection_error=2.0"

``--run`` is the output folder of ``python -m d2sfm.evaluate gt --compare`` (its ``SCENE/d2-ss/database.db``,
already refined by the database stage, is mapped once into ``--work``, with the scene's known K held, as the run
maps it). A variant is a name and ``key=value`` overrides of ``ModelRefineSettings`` (``alignment.key`` for its
``AlignmentSettings``); values are Python literals. Printed per scene and variant: the stage's seconds, points,
observations, median and max position error (mm) and AUC@1 against the truth.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SHARED  # noqa: E402

SCENES = ("fountain-P11", "Herz-Jesus-P8", "entry-P10")


def parse_variant(text: str):
    """'name key=value ...' -> (name, ModelRefineSettings)."""
    from d2sfm.refinement.model_refinement import ModelRefineSettings

    name, *pairs = text.split()
    settings = ModelRefineSettings(intrinsics="none")
    alignment = {}
    top = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        (alignment if key.startswith("alignment.") else top)[key.removeprefix("alignment.")] = ast.literal_eval(value)
    return name, dataclasses.replace(settings, alignment=dataclasses.replace(settings.alignment, **alignment), **top)


def mapped_model(run: Path, work: Path, scene: str, seed: int = 0) -> Path:
    """The scene's refined database mapped once (as the run maps it: known K held) with the mapper's ``seed``,
    kept in ``work``."""
    from d2sfm.sfm.cameras import INTRINSICS_REFINEMENT
    from d2sfm.sfm.mapping import run_mapping

    folder = work / (scene if seed == 0 else f"{scene}-seed{seed}")
    if not (folder / "sparse" / "0").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(run / scene / "d2-ss" / "database.db", folder / "database.db")
        run_mapping(folder / "database.db", SHARED / "data" / "strecha" / scene / "images", folder / "sparse",
                    seed=seed, intrinsics=INTRINSICS_REFINEMENT["none"], progress=False)
    return folder / "sparse" / "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="'name key=value ...' (see above); 'default' alone: as shipped")
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "gt", help="evaluate gt --compare's output")
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "model_stage_variants")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="the mapper's seeds: each maps the scene anew, and every variant refines each model")
    args = parser.parse_args()

    import pycolmap

    from d2sfm.evaluation.ground_truth import read_truth, score_model
    from d2sfm.refinement.model_refinement import refine_model_folder

    variants = [parse_variant(text) for text in args.variants]
    print("| scene | seed | variant | seconds | points | observations | pos. err. median mm | max mm | AUC@1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scene, seed in [(scene, seed) for scene in args.scenes for seed in args.seeds]:
        source = mapped_model(args.run, args.work, scene, seed)
        truth = read_truth(SHARED / "data" / "strecha" / scene / "gt_dense_cameras")
        for name, settings in variants:
            folder = source.parents[1] / f"variant-{name}"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source, folder)
            started = time.perf_counter()
            summary = refine_model_folder(folder, SHARED / "data" / "strecha" / scene / "images",
                                          torch.device("cpu"), settings)
            seconds = time.perf_counter() - started
            score = score_model(pycolmap.Reconstruction(folder), truth)
            print(f"| {scene} | {seed} | {name} | {seconds:.1f} | {summary.points_after:,} | "
                  f"{summary.observations_after:,} | "
                  f"{1000 * score.summary['median_position_error']:.2f} | "
                  f"{1000 * score.summary['max_position_error']:.2f} | {score.auc['1']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
