"""Does training improve the features? Fine-tune D2-Net on homography pairs of some photos, then compare the
starting and the fine-tuned weights on sequences synthesised from held-out photos (the HPatches protocol of
``d2sfm.evaluate``: MMA at 1-10 px, illumination, viewpoint and night-like splits).

    python benchmarks/finetune_homography.py                     # ../shared photos, HED weights, CPU
    python benchmarks/finetune_homography.py --device cuda --epochs 10 --pairs-per-epoch 1000

The photos of ``--images`` (default: the Sacre Coeur photos and the qualitative pairs of ../shared/data) are
split by name: every ``--holdout-every``-th Sacre Coeur photo is held out for evaluation, the rest train. Training
runs ``python -m d2sfm.train --data homography`` (Adam 1e-3, conv4_3 only) from ``--weights``; evaluation runs
``python -m d2sfm.evaluate hpatches --images HELD_OUT --weights start=... --weights tuned=...``. Everything is
written under ``--output`` and resumes there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR, SHARED, WEIGHTS  # noqa: E402


def link_photos(sources: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = folder / f"{source.parent.name}_{source.name}"
        if not target.exists():
            target.symlink_to(source.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--output", type=Path, default=Path("outputs/finetune_homography"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pairs-per-epoch", type=int, default=300)
    parser.add_argument("--holdout-every", type=int, default=3, help="hold out every N-th Sacre Coeur photo")
    parser.add_argument("--methods", nargs="+", default=["d2-ss", "d2-ms"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    sacre = sorted(SACRE_COEUR.iterdir())
    qualitative = sorted((SHARED / "data" / "d2net_qualitative").glob("pair_*/*.jpg"))
    held_out = sacre[::args.holdout_every]
    training = [p for p in sacre if p not in held_out] + qualitative
    link_photos(training, args.output / "train_photos")
    link_photos(held_out, args.output / "held_out_photos")
    print(f"training photos: {len(training)}, held-out photos: {len(held_out)}", file=sys.stderr)
    run = [sys.executable, "-m"]
    subprocess.run(run + ["d2sfm.train", "--data", "homography", "--images", str(args.output / "train_photos"),
                          "--weights", str(args.weights), "--output", str(args.output / "train"),
                          "--epochs", str(args.epochs), "--pairs-per-epoch", str(args.pairs_per_epoch),
                          "--device", args.device], check=True, cwd=REPO)
    tuned = args.output / "train" / "checkpoints" / "best.pth"
    if not tuned.is_file():
        tuned = args.output / "train" / "checkpoints" / "last.pth"
    subprocess.run(run + ["d2sfm.evaluate", "hpatches", "--images", str(args.output / "held_out_photos"),
                          "--output", str(args.output / "evaluation"), "--methods", *args.methods,
                          "--weights", f"start={args.weights}", "--weights", f"tuned={tuned}",
                          "--device", args.device, "--quiet"], check=True, cwd=REPO)
    log = [json.loads(line) for line in (args.output / "train" / "log.jsonl").read_text().splitlines()]
    print("\n| epoch | train loss | validation loss | training time (s) |\n| ---: | ---: | ---: | ---: |")
    for record in log:
        train_loss = record.get("train_loss")
        print(f"| {record['epoch']} | {'' if train_loss is None else f'{train_loss:.4f}'} | "
              f"{record['val_loss']:.4f} | {record.get('seconds', 0):.0f} |")


if __name__ == "__main__":
    main()
