"""``python -m d2sfm.train``: fine-tune D2-Net with the paper's loss on MegaDepth or on homographies of any photos.

Adam (learning rate 1e-3), conv4_3 only by default (``--trainable-layers``), batches of pairs with ground-truth
correspondences, soft detection and the describe-and-detect loss on the stride-8 training network. Checkpoints
are written in the official layout (``{'model': state_dict, ...}``), so ``--weights OUTPUT/checkpoints/last.pth``
works with every d2sfm command and with the original code; ``best.pth`` has the lowest validation loss. A rerun with
the same ``--output`` resumes from ``last.pth`` (model, optimiser, epoch and step; the pairs are a function of seed,
epoch and index, so the resumed run sees exactly the pairs it would have seen). ``log.jsonl`` holds the losses.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.commands.extract import MAX_WORKERS
from d2sfm.commands.options import add_device_argument, add_weights_argument, number
from d2sfm.errors import D2sfmError
from d2sfm.features.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from d2sfm.features.network import D2Net
from d2sfm.features.weights import resolve_weights
from d2sfm.io.atomic import read_text_file
from d2sfm.io.images import list_images
from d2sfm.runtime.device import resolve_device
from d2sfm.runtime.orphans import end_with_this_process
from d2sfm.training.data import HomographyPairs, MegaDepthPairs
from d2sfm.training.step import batch_loss

DATA_KINDS = ("homography", "megadepth")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.train", description=__doc__.replace("``", ""),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=DATA_KINDS, required=True,
                        help="homography: pairs made from --images; megadepth: --dataset in the D2-Net format")
    parser.add_argument("--output", type=Path, default=Path("outputs/train"),
                        help="checkpoints/, log.jsonl (default outputs/train); rerun to resume")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    parser.add_argument("--epochs", type=number(int, at_least=1), default=10,
                        help="number of epochs (default 10, as the original)")
    parser.add_argument("--lr", type=number(float, above=0), default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=number(int, at_least=1), default=1,
                        help="pairs per step (default 1, as the original)")
    parser.add_argument("--trainable-layers", type=number(int, at_least=1, at_most=10), default=1,
                        help="train the last N conv layers (default 1: conv4_3 only, as the paper; up to 10)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the pairs and torch (default 1)")
    parser.add_argument("--workers", type=number(int, at_least=0, at_most=MAX_WORKERS), default=0,
                        help=f"data loader processes (default 0; at most {MAX_WORKERS})")
    parser.add_argument("--checkpoint-every", type=number(int, at_least=1), default=200,
                        help="also save last.pth every N steps inside an epoch (default 200)")
    homography = parser.add_argument_group("homography pairs")
    homography.add_argument("--images", type=Path, help="folder of training photos")
    homography.add_argument("--val-images", type=Path,
                            help="folder of validation photos (default: the training photos, other pairs)")
    homography.add_argument("--pairs-per-epoch", type=number(int, at_least=1), default=1000,
                            help="training pairs per epoch")
    homography.add_argument("--val-pairs", type=number(int, at_least=0), default=100,
                            help="validation pairs (default 100)")
    homography.add_argument("--strength", type=number(float, at_least=0, at_most=1), default=0.6,
                            help="homography strength in [0, 1]")
    homography.add_argument("--night-probability", type=number(float, at_least=0, at_most=1), default=0.3,
                            help="share of pairs whose second image is night-like (default 0.3)")
    homography.add_argument("--crop", type=number(int, at_least=32), default=256,
                            help="crop size in pixels (default 256)")
    megadepth = parser.add_argument_group("MegaDepth")
    megadepth.add_argument("--dataset", type=Path, help="MegaDepth root (image and depth paths are relative to it)")
    megadepth.add_argument("--scene-info", type=Path, help="scene_info folder (default DATASET/scene_info)")
    megadepth.add_argument("--train-scenes", type=Path, help="file listing training scenes (default: all)")
    megadepth.add_argument("--val-scenes", type=Path, help="file listing validation scenes (default: none)")
    megadepth.add_argument("--pairs-per-scene", type=number(int, at_least=1), default=100,
                           help="pairs per scene and epoch")
    megadepth.add_argument("--max-scale-ratio", type=number(float, at_least=1), default=1.5, help="default 1.5")
    add_weights_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _scene_list(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise D2sfmError(f"{path}: no such scene list; pass a text file with one scene name per line")
    return [line.strip() for line in read_text_file(path, "scene list").splitlines() if line.strip()]


def build_datasets(args: argparse.Namespace):
    """(training set, validation set or None)."""
    if args.data == "homography":
        if args.images is None:
            raise D2sfmError("--data homography needs --images DIR (a folder of photos)")
        if not args.images.is_dir():
            raise D2sfmError(f"{args.images}: no such folder; pass --images with a folder of photos")
        common = dict(crop=args.crop, strength=args.strength, night_probability=args.night_probability)
        train = HomographyPairs(args.images, pairs_per_epoch=args.pairs_per_epoch, seed=args.seed, **common)
        val_root = args.val_images or args.images
        if not val_root.is_dir():
            raise D2sfmError(f"{val_root}: no such folder; pass --val-images with a folder of photos")
        val = HomographyPairs(val_root, list_images(val_root), pairs_per_epoch=args.val_pairs,
                              seed=args.seed + 1000, **common)
        return train, val
    if args.dataset is None:
        raise D2sfmError("--data megadepth needs --dataset DIR (datasets/megadepth.md)")
    info = args.scene_info or args.dataset / "scene_info"
    common = dict(pairs_per_scene=args.pairs_per_scene, max_scale_ratio=args.max_scale_ratio, crop=args.crop)
    train = MegaDepthPairs(args.dataset, info, _scene_list(args.train_scenes), seed=args.seed, **common)
    val = MegaDepthPairs(args.dataset, info, _scene_list(args.val_scenes), seed=42, **common) \
        if args.val_scenes else None
    return train, val


def _mean_loss(model: D2Net, dataset, device: torch.device, batch_size: int, progress: bool) -> float | None:
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="validation", unit="batch",
                          disable=not progress, leave=False):
            loss, _ = batch_loss(model, batch, device)
            if loss is not None:
                losses.append(loss.item())
    model.train()
    return float(np.mean(losses)) if losses else None


def _save(path: Path, model: D2Net, optimizer, state: dict, args: argparse.Namespace) -> None:
    save_checkpoint(path, model, optimizer=optimizer.state_dict(), training=state,
                    args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})


def _log(output: Path, record: dict) -> None:
    with open(output / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.trainable_layers <= 10:
        raise D2sfmError(f"--trainable-layers {args.trainable_layers}: choose 1 (conv4_3) up to 10 (all)")
    device = resolve_device(args.device)
    output, checkpoints = args.output, args.output / "checkpoints"
    if args.overwrite and output.exists():
        shutil.rmtree(output)
    checkpoints.mkdir(parents=True, exist_ok=True)
    train_set, val_set = build_datasets(args)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    last = checkpoints / "last.pth"
    resumed = read_checkpoint(last) if last.is_file() else None
    model = model_from_checkpoint(resumed, str(last), trainable_layers=args.trainable_layers) if resumed else \
        load_model(resolve_weights(args.weights), trainable_layers=args.trainable_layers)
    model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    state = {"epoch": 1, "step": 0, "best_val": None, "seconds": 0.0}
    if resumed:
        optimizer.load_state_dict(resumed["optimizer"])
        state.update(resumed["training"])
        print(f"resuming {last}: epoch {state['epoch']}, step {state['step']}")
    elif val_set is not None:
        start_loss = _mean_loss(model, val_set, device, args.batch_size, not args.quiet)
        state["best_val"] = start_loss
        _log(output, {"epoch": 0, "val_loss": start_loss})
        print(f"validation loss before training: {start_loss:.4f}")
    progress = not args.quiet
    while state["epoch"] <= args.epochs:
        epoch = state["epoch"]
        train_set.set_epoch(epoch)
        steps = -(-len(train_set) // args.batch_size)
        start_index = state["step"] * args.batch_size
        loader = DataLoader(Subset(train_set, range(start_index, len(train_set))), batch_size=args.batch_size,
                            num_workers=args.workers, worker_init_fn=end_with_this_process())
        losses, started = [], time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", unit="step", total=steps,
                   initial=state["step"], disable=not progress)
        for batch in bar:
            loss, _ = batch_loss(model, batch, device)
            state["step"] += 1
            if loss is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            if state["step"] % args.checkpoint_every == 0 and state["step"] < steps:
                _save(last, model, optimizer, {**state, "seconds": state["seconds"] + time.perf_counter() - started},
                      args)
        state["seconds"] += time.perf_counter() - started
        val_loss = _mean_loss(model, val_set, device, args.batch_size, progress) if val_set is not None else None
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": val_loss,
                  "steps_with_loss": len(losses), "seconds": state["seconds"]}
        _log(output, record)
        print(f"epoch {epoch}: train loss {record['train_loss']}, validation loss {val_loss}")
        state.update(epoch=epoch + 1, step=0)
        if val_loss is not None and (state["best_val"] is None or val_loss < state["best_val"]):
            state["best_val"] = val_loss
            _save(checkpoints / "best.pth", model, optimizer, state, args)
        _save(last, model, optimizer, state, args)
    print(f"done: {last}" + (f", best validation loss {state['best_val']:.4f} in {checkpoints / 'best.pth'}"
                             if state["best_val"] is not None else ""))
    return 0


if __name__ == "__main__":
    run_main(main)
