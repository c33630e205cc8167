"""How much of the position error against the truth two methods share: per camera of each Strecha scene, the
error of d2sfm's and of COLMAP SIFT's model against the true cameras (each aligned to the truth as the scorer
aligns it), the distance between the two models' cameras (d2sfm's aligned to SIFT's, once SIFT's is in the
truth's frame and units) and the cosine between the two error vectors.

Where the two models agree with each other far better than either agrees with the truth, and their errors point
the same way, that part of the error is common to both: the true cameras' own error (or of the K given to both),
not a method's. A goal "below SIFT's error" is then decided by the part the methods do not share, which is at
most their disagreement.

    python benchmarks/gt_common_error.py --run outputs/gt

``--run`` is the output folder of ``python -m d2sfm.evaluate gt --compare ... --methods d2-ss sift`` per scene.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SHARED  # noqa: E402

SCENES = ("fountain-P11", "Herz-Jesus-P8", "entry-P10")


def aligned_errors(cameras, truth):
    """{name: error vector (truth units)} of the cameras aligned to the truth by the scorer's similarity, and the
    aligned cameras as a truth of their own."""
    from d2sfm.evaluation.ground_truth import DEFAULT_INLIER_SHARE, TruthCamera, align, scene_extent

    similarity, _ = align(cameras, truth, DEFAULT_INLIER_SHARE * scene_extent(truth))
    if similarity is None:
        raise SystemExit("a model does not align to the truth")
    moved = {}
    for name, camera in cameras.items():
        if name in truth:
            rotation = camera.rotation @ similarity.rotation.matrix().T
            reference = truth[name]
            moved[name] = TruthCamera(name, reference.K, rotation, similarity * camera.centre, reference.width,
                                      reference.height)
    return {name: moved[name].centre - truth[name].centre for name in moved}, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "outputs" / "gt", help="evaluate gt --compare's output")
    parser.add_argument("--method", default="d2-ss", help="the run's method folder compared with its 'sift'")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    args = parser.parse_args()

    import pycolmap

    from d2sfm.evaluation.ground_truth import model_cameras, read_truth, score_cameras

    print("| scene | camera | d2sfm vs truth mm | SIFT vs truth mm | d2sfm vs SIFT mm | cos(errors) |")
    print("|---|---|---|---|---|---|")
    for scene in args.scenes:
        truth = read_truth(SHARED / "data" / "strecha" / scene / "gt_dense_cameras")
        ours = model_cameras(pycolmap.Reconstruction(args.run / scene / args.method / "sparse" / "0"))
        sift = model_cameras(pycolmap.Reconstruction(args.run / scene / "sift" / "sparse" / "0"))
        ours_errors, _ = aligned_errors(ours, truth)
        sift_errors, sift_as_truth = aligned_errors(sift, truth)
        between = {camera.name: camera.position_error for camera in score_cameras(ours, sift_as_truth).cameras}
        rows = []
        for name in sorted(set(ours_errors) & set(sift_errors)):
            a, b = ours_errors[name], sift_errors[name]
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            rows.append((1000 * np.linalg.norm(a), 1000 * np.linalg.norm(b), 1000 * between[name], cosine))
            print(f"| {scene} | {name} | {rows[-1][0]:.1f} | {rows[-1][1]:.1f} | {rows[-1][2]:.1f} | {cosine:.2f} |")
        table = np.array(rows)
        print(f"| {scene} | median / max | {np.median(table[:, 0]):.1f} / {table[:, 0].max():.1f} | "
              f"{np.median(table[:, 1]):.1f} / {table[:, 1].max():.1f} | "
              f"{np.median(table[:, 2]):.1f} / {table[:, 2].max():.1f} | {np.median(table[:, 3]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
