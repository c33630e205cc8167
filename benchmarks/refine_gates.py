"""Which patch-alignment fits to trust: the correlation gate alone (as until 2026-11-24) against the default,
which also requires the fitted position to be certain (``AlignmentSettings.max_uncertainty``), in one run.

    python benchmarks/refine_gates.py                 # synthetic scenes and ../shared/data/sacre_coeur, CPU
    python benchmarks/refine_gates.py --no-photos     # the synthetic scenes only

Two tables:

* **Synthetic views, exact truth.** Two rendered scenes (12 views of 800x600 on an arc; 120 views of 320x240 on
  rings, retrieval pairs) are extracted, matched and verified once without refinement. For each gate, every
  keypoint the database refinement aligns is compared with where the true geometry puts its anchor's point:
  how many fits are taken and how many of them end more than 2 px from the truth. Then the refined database is
  mapped, the model refined with the same gate, and the cameras compared with the truth (rotation in degrees,
  position in % of the camera spread; median and largest over the images, median over the seeds).
* **Real photos.** Sacre Coeur single- and multi-scale, as ``refine_sfm.py`` runs them: one verified database,
  each gate refines a copy and its mapped models (seeds 0, 10, 20; medians over the seeds' largest models).

Every gate row of one scene starts from the same verified database, so rows differ only in the gate.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import SACRE_COEUR, WEIGHTS  # noqa: E402
from benchmarks.refine_sfm import map_seeds, median_over_seeds, verified_database  # noqa: E402
from benchmarks.sfm_vs_sift import d2sfm_features  # noqa: E402

# (row, database/model alignment settings replaced, or None: no refinement)
GATES = (
    ("no refinement", None),
    ("correlation >= 0.9 only (before)", {"max_uncertainty": None}),
    ("+ uncertainty <= 0.15 px (default)", {}),
    ("+ uncertainty <= 0.1 px", {"max_uncertainty": 0.1}),
    ("correlation >= 0.8, uncertainty <= 0.15 px", {"min_correlation": 0.8}),
)
# Spaced seeds: a mapping retry takes the next seed, so seeds 0, 1, 2 could repeat one another's runs.
SEEDS = (0, 10, 20)
SCENES = (  # name, views, width, height, focal, layout, pairs, seeds
    ("arc", 12, 800, 600, 640.0, "arc", "exhaustive", SEEDS),
    ("rings", 120, 320, 240, 256.0, "rings", "retrieval", (0,)),
)


def settings_for(gate: dict):
    from d2sfm.refinement.database_refinement import RefineSettings
    from d2sfm.refinement.model_refinement import ModelRefineSettings
    from d2sfm.refinement.patch_alignment import AlignmentSettings

    model = ModelRefineSettings()
    return (RefineSettings(alignment=replace(AlignmentSettings(), **gate)),
            replace(model, alignment=replace(model.alignment, **gate)))


def render_and_verify(work: Path, scene, weights: Path, device: str) -> Path:
    """A rendered scene reconstructed once without refinement: its database is the verified start of every gate."""
    from d2sfm.synthetic.scene import render_scene

    name, count, width, height, focal, layout, pairs, _ = scene
    folder = work / name
    render_scene(folder, count, width, height, focal=focal, layout=layout)
    subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(folder), "--no-refine", "--pairs", pairs,
                    "--single-scale", "--camera-mode", "single", "--camera-model", "PINHOLE", "--mapper-attempts",
                    "1", "--weights", str(weights), "--device", device], check=True, stdout=subprocess.DEVNULL)
    return folder


def fits_against_truth(database: Path, folder: Path, settings, device: torch.device) -> dict:
    """The database refinement's alignment of ``database`` with every moved keypoint compared with the truth:
    the anchor's keypoint is cast onto the true surface and projected into the keypoint's view."""
    from d2sfm.io.images import gray_image_reader
    from d2sfm.refinement.database_refinement import read_database_keypoints
    from d2sfm.refinement.patch_alignment import align_keypoints, anchors_and_maps, edge_affinities
    from d2sfm.refinement.tracks import Tracks, build_tracks, read_verified_matches
    from d2sfm.synthetic.scene import courtyard, transfer_to_view

    names, keypoints = read_database_keypoints(database)
    matches = read_verified_matches(database)
    tracks = build_tracks(matches)
    xy = np.zeros((len(tracks.track_ids), 2))
    for image_id, nodes in tracks.nodes_by_image():
        xy[nodes] = keypoints[image_id][tracks.keypoint_ids[nodes], :2]
    edge_maps = edge_affinities(matches, keypoints)
    fixed = np.zeros(len(xy), bool)
    alignment = align_keypoints(tracks, xy, edge_maps, fixed, gray_image_reader(names, folder / "images"),
                                settings.alignment, device)
    small = tracks.track_sizes()[tracks.track_ids] <= settings.alignment.max_track_size
    within = small[tracks.edges[:, 0]]  # the anchors align_keypoints used
    anchors, _ = anchors_and_maps(Tracks(tracks.image_ids, tracks.keypoint_ids, tracks.track_ids,
                                         tracks.edges[within]), edge_maps[within], fixed)
    truth = pycolmap.Reconstruction(folder / "ground_truth")
    by_name = {image.name: image for image in truth.images.values()}
    planes = courtyard(0)
    true_xy = np.full_like(xy, np.nan)
    moving = np.flatnonzero(alignment.moving)
    views = np.stack([tracks.image_ids[anchors[moving]], tracks.image_ids[moving]], axis=1)
    for source, target in np.unique(views, axis=0):
        nodes = moving[(views[:, 0] == source) & (views[:, 1] == target)]
        projected, visible = transfer_to_view(planes, truth, by_name[names[source]], by_name[names[target]],
                                              xy[anchors[nodes]])
        true_xy[nodes[visible]] = projected[visible]
    taken = alignment.aligned & np.isfinite(true_xy[:, 0])
    errors = np.linalg.norm(alignment.positions - true_xy, axis=1)[taken]
    return {"tried": int(alignment.moving.sum()), "taken": int(alignment.aligned.sum()),
            "off": float(np.mean(errors > 2.0)) if len(errors) else 0.0,
            "median": float(np.median(errors)) if len(errors) else float("nan")}


def cameras_against_truth(runs, truth: Path) -> dict:
    from d2sfm.evaluation.ground_truth import demo_check

    checks = [demo_check(models[0], truth) for models, _ in runs if models]
    checks = [check for check in checks if check.get("aligned")]
    keys = ("median_rotation_error_deg", "max_rotation_error_deg", "median_position_error_rel",
            "max_position_error_rel")
    return {key: float(np.median([check[key] for check in checks])) for key in keys} if checks else {}


def refined_copy(raw: Path, target: Path, images: Path, weights: Path, device, settings) -> Path:
    from d2sfm.refinement.database_refinement import refine_database

    shutil.copy(raw, target)
    if settings is not None:
        refine_database(target, images, weights, device, settings, progress=False)
    return target


def run_gate(raw: Path, images: Path, work: Path, seeds, gate, weights: Path, device):
    """One gate from the verified database ``raw``: its refined copy mapped per seed and each seed's largest model
    refined with the same gate. Returns the runs and the medians of their largest models' statistics."""
    database_settings, model_settings = settings_for(gate) if gate is not None else (None, None)
    database = refined_copy(raw, work.with_suffix(".db"), images, weights, device, database_settings)
    runs, _ = map_seeds(database, images, work, seeds, device if gate is not None else None, model_settings)
    return runs, median_over_seeds([model_statistics_of(models) for models, _ in runs])


def registered(runs) -> list[int]:
    return [len(models) and models[0].num_reg_images() for models, _ in runs]


def synthetic_rows(work: Path, weights: Path, device: torch.device) -> list[str]:
    rows = []
    for scene in SCENES:
        name, count, width, height, *_, seeds = scene
        folder = render_and_verify(work, scene, weights, device.type)
        for label, gate in GATES:
            fits = (fits_against_truth(folder / "database.db", folder, settings_for(gate)[0], device)
                    if gate is not None else None)
            runs, statistics = run_gate(folder / "database.db", folder / "images", work / f"{name}_{len(rows)}",
                                        seeds, gate, weights, device)
            cameras = cameras_against_truth(runs, folder / "ground_truth")
            fit_cells = (f"{fits['taken']} / {fits['tried']} | {100 * fits['off']:.1f}% | {fits['median']:.3f}"
                         if fits else " |  | ")
            rows.append(f"| {name} ({count} views {width}x{height}) | {label} | {fit_cells} | "
                        f"{registered(runs)} | "
                        f"{statistics.get('mean_track_length', 0):.2f} | "
                        f"{statistics.get('mean_reprojection_error', 0):.3f} | "
                        f"{cameras.get('median_rotation_error_deg', np.nan):.3f} / "
                        f"{cameras.get('max_rotation_error_deg', np.nan):.3f} | "
                        f"{100 * cameras.get('median_position_error_rel', np.nan):.3f} / "
                        f"{100 * cameras.get('max_position_error_rel', np.nan):.3f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def model_statistics_of(models) -> dict:
    from d2sfm.sfm.mapping import model_statistics

    return model_statistics(models[0]) if models else {}


def photo_rows(work: Path, images: Path, weights: Path, device: torch.device) -> list[str]:
    from d2sfm.io.images import list_images

    names = list_images(images)
    rows = []
    for label, scales in (("SS", (1.0,)), ("MS", (0.5, 1.0, 2.0))):
        folder = work / label
        folder.mkdir()
        d2sfm_features(images, names, folder / "features.h5", weights, scales, True, device=device)
        raw, _, _ = verified_database(images, names, folder / "features.h5", folder)
        for index, (gate_label, gate) in enumerate(GATES):
            runs, statistics = run_gate(raw, images, folder / f"gate_{index}", SEEDS, gate, weights, device)
            rows.append(f"| d2sfm {label} | {gate_label} | "
                        f"{registered(runs)} | "
                        f"{statistics.get('points3D', 0):.0f} | {statistics.get('observations', 0):.0f} | "
                        f"{statistics.get('mean_track_length', 0):.2f} | "
                        f"{statistics.get('mean_reprojection_error', 0):.3f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    from d2sfm.runtime.device import resolve_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=SACRE_COEUR)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-photos", action="store_true", help="leave out the Sacre Coeur table")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    torch.set_grad_enabled(False)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        synthetic = synthetic_rows(Path(scratch), args.weights, device)
        photos = [] if args.no_photos else photo_rows(Path(scratch), args.images, args.weights, device)
    print(f"device {device.type}, torch {torch.__version__}, pycolmap {pycolmap.__version__}\n")
    print("Synthetic views. fits: taken of tried by the database refinement; > 2 px: of the taken fits, those "
          "ending more than 2 px from the truth; cameras: median over seeds of the median / largest error\n")
    print("| scene | gate | fits taken | > 2 px from truth | median error (px) | registered (per seed) | "
          "track length | reproj. error (px) | rotation error (deg) | position error (%) |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(synthetic))
    if photos:
        print(f"\nReal photos: {args.images} (medians over seeds {', '.join(map(str, SEEDS))} of the largest model)\n")
        print("| pipeline | gate | registered (per seed) | 3D points | observations | track length | "
              "reproj. error (px) |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
        print("\n".join(photos))


if __name__ == "__main__":
    main()
