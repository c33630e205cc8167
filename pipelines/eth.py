"""The ETH local-feature evaluation's SfM statistics (Schönberger et al., CVPR 2017; the D2-Net paper's Table 3)
for one scene: ``python -m d2sfm.evaluate eth --dataset datasets/eth/<scene>``.

Runs ``d2sfm.reconstruct`` (multi- and/or single-scale) and COLMAP's SIFT pipeline (pycolmap, COLMAP's mapper
options) on the scene's photos with the same pairs (the scene's ``match_list.txt`` when present, otherwise
exhaustive up to 100 images and retrieval beyond), and reports the benchmark's columns for each: registered
images, sparse points, observations, mean track length, mean reprojection error and, with ``--dense`` on a
pycolmap built with CUDA, dense points. Each method works in its own folder under ``--output`` and resumes there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from d2sfm.api import reconstruct
from d2sfm.config import DenseConfig, PairsConfig, RunConfig, preset
from d2sfm.errors import D2sfmError
from d2sfm.evaluation.sift_baseline import sift_reconstruction
from d2sfm.io.atomic import write_text_atomic
from d2sfm.io.images import list_images
from d2sfm.matching.pairs import EXHAUSTIVE_UP_TO
from d2sfm.sfm.dense import cuda_problem, run_dense
from d2sfm.sfm.mapping import model_statistics

log = logging.getLogger("d2sfm")

METHODS = {"d2-ms": "d2sfm MS", "d2-ss": "d2sfm SS", "sift": "COLMAP SIFT"}
MATCH_LIST = "match_list.txt"
COLUMNS = [("registered_images", "registered images", "{:.0f}"), ("points3D", "sparse points", "{:.0f}"),
           ("observations", "observations", "{:.0f}"), ("mean_track_length", "track length", "{:.2f}"),
           ("mean_reprojection_error", "reprojection error (px)", "{:.2f}"), ("dense_points", "dense points", "{}")]


@dataclass(frozen=True)
class EthOptions:
    """What ``python -m d2sfm.evaluate eth`` can be told (its options say the same)."""

    methods: tuple[str, ...] = tuple(METHODS)  # which pipelines to run: d2-ms, d2-ss, sift
    dense: bool = False  # also run MVS and count dense points (needs CUDA pycolmap)
    seed: int = 0  # mapper seed of the SIFT baseline
    weights: str | None = None  # D2 weights: a .pth path or an official name
    device: str = "auto"  # D2 extraction and matching device
    progress: bool = True  # progress bars


def scene_inputs(dataset: Path) -> tuple[Path, list[str], Path | None]:
    """(image folder, names, pair list or None), with one-line errors for a wrong layout."""
    images = dataset / "images"
    if not images.is_dir():
        raise D2sfmError(f"{images}: no such folder; an ETH scene holds its photos in images/ (datasets/eth.md)")
    names = list_images(images)
    if len(names) < 2:
        raise D2sfmError(f"{images}: {len(names)} image(s); a reconstruction needs at least two")
    match_list = dataset / MATCH_LIST
    return images, names, match_list if match_list.is_file() else None


def run_d2(kind: str, images: Path, match_list: Path | None, folder: Path, options: EthOptions) -> dict:
    config = preset(kind, pairs=PairsConfig(method=str(match_list) if match_list else "auto"),
                    run=RunConfig(device=options.device, progress=options.progress),
                    dense=DenseConfig(enabled=options.dense and not cuda_problem()))  # without CUDA: n/a
    config = dataclasses.replace(config, features=dataclasses.replace(config.features, weights=options.weights))
    stats = reconstruct(folder, config, images=images).statistics
    row = dict(stats["models"][0]) if stats["models"] else {}
    row["dense_points"] = stats.get("dense_points")
    row["seconds"] = sum(stats["stage_seconds"].values())
    return row


def run_sift(images: Path, names: Sequence[str], match_list: Path | None, folder: Path,
             options: EthOptions) -> dict:
    stats_path = folder / "stats.json"
    if stats_path.is_file():
        return json.loads(stats_path.read_text())
    start = time.perf_counter()
    models = sift_reconstruction(images, names, folder, seed=options.seed, pairs_path=match_list,
                                 progress=options.progress)
    row = model_statistics(models[0]) if models else {}
    row["dense_points"] = None
    if options.dense and models and not cuda_problem():
        row["dense_points"] = run_dense(folder / "sparse" / "0", images, folder / "dense")["dense_points"]
    row["seconds"] = time.perf_counter() - start
    write_text_atomic(stats_path, json.dumps(row, indent=2))
    return row


def sift_pairs(match_list: Path | None, output: Path, count: int) -> Path | None:
    """The scene's list, else (above the exhaustive limit) the pairs the D2 run chose, else None: exhaustive."""
    if match_list or count <= EXHAUSTIVE_UP_TO:
        return match_list
    chosen = [output / kind / "pairs.txt" for kind in ("d2-ms", "d2-ss") if (output / kind / "pairs.txt").is_file()]
    return chosen[0] if chosen else None


def format_table(rows: dict[str, dict], total_images: int) -> str:
    header = ["method", *[title for _, title, _ in COLUMNS], "time (s)"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for label, row in rows.items():
        cells = []
        for key, _, form in COLUMNS:
            value = row.get(key)
            cells.append("n/a" if value is None else form.format(value))
        cells[0] = f"{cells[0]} / {total_images}"
        lines.append("| " + " | ".join([label, *cells, f"{row.get('seconds', 0):.0f}"]) + " |")
    return "\n".join(lines)


def run(dataset: str | Path, options: EthOptions | None = None, output: str | Path | None = None) -> dict:
    """Every method's largest model's statistics on the scene in ``dataset``, written to eth.json under ``output``
    (default outputs/eth/<scene>) and returned; each method resumes in its own folder."""
    options, dataset = options or EthOptions(), Path(dataset)
    output = Path(output) if output is not None else None
    images, names, match_list = scene_inputs(dataset)
    output = output or Path("outputs/eth") / dataset.resolve().name
    problem = cuda_problem() if options.dense else None
    if problem:
        log.warning(f"warning: {problem}; dense points are reported as n/a")
    log.info(f"{len(names)} images, pairs: {match_list or 'exhaustive (up to 100 images) or retrieval'}")
    rows = {}
    for kind in sorted(options.methods, key=list(METHODS).index):  # D2 first: SIFT may reuse its pairs
        folder = output / kind
        log.info(f"== {METHODS[kind]} in {folder}")
        if kind == "sift":
            rows[METHODS[kind]] = run_sift(images, names, sift_pairs(match_list, output, len(names)), folder, options)
        else:
            rows[METHODS[kind]] = run_d2(kind, images, match_list, folder, options)
    report = {"scene": str(dataset), "images": len(names), "pairs": str(match_list) if match_list else "auto",
              "largest_model": rows}
    write_text_atomic(output / "eth.json", json.dumps(report, indent=2))
    log.info(format_table(rows, len(names)))
    log.info(f"wrote {output / 'eth.json'} (statistics of each method's largest model)")
    return report
