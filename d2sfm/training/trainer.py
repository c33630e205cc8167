"""Fine-tuning D2-Net with the paper's loss: ``train(TrainingConfig(...))``, what ``python -m d2sfm.train`` runs.

Adam, the last ``trainable_layers`` conv layers (conv4_3 only by default, as the paper), batches of pairs with
ground-truth correspondences (homographies of any photos, or MegaDepth), soft detection and the describe-and-detect
loss on the stride-8 training network. The output folder holds ``train.json`` (the options: the folder's record),
``log.jsonl`` (one line per epoch; epoch 0 is the validation loss before training) and ``checkpoints/last.pth``
and ``best.pth`` in the official layout, so that they load in every d2sfm command and in the original code.

A rerun with the same output resumes from ``last.pth`` (model, optimiser, epoch, step and the epoch's losses so
far); every pair is a function of (seed, epoch, index), so the resumed run computes what an uninterrupted one
would. A rerun whose options would change that result is refused; ``overwrite`` starts again, deleting only what
training wrote there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from d2sfm.bounds import check_numbers
from d2sfm.errors import D2sfmError, some_names
from d2sfm.features.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from d2sfm.features.network import D2Net
from d2sfm.features.settings import MAX_LOADER_WORKERS
from d2sfm.features.weights import DEFAULT_WEIGHTS, KNOWN_WEIGHTS, resolve_weights
from d2sfm.io.atomic import read_text_file, write_text_atomic
from d2sfm.io.images import list_images
from d2sfm.runtime.device import resolve_device
from d2sfm.runtime.orphans import end_with_this_process
from d2sfm.runtime.run_lock import folder_lock, is_housekeeping
from d2sfm.training.data import HomographyPairs, MegaDepthPairs
from d2sfm.training.settings import (
    DATA_KINDS,
    MIN_CORRESPONDENCES,
    MIN_CROP,
    SCALING_STEPS,
    TrainingConfig,
)
from d2sfm.training.step import batch_loss

log = logging.getLogger("d2sfm")

RECORD = "train.json"  # the options, written before any work: what makes a folder a training output
LOG = "log.jsonl"
CHECKPOINTS = "checkpoints"
CHECKPOINT_NAMES = ("last.pth", "best.pth")
PATH_OPTIONS = ("images", "val_images", "dataset", "scene_info", "train_scenes", "val_scenes")
# The options that change what a run computes, for both kinds of data and for each; a resumed run must have those
# its checkpoint was trained with. The others (epochs, workers, device, checkpoint_every, progress) may differ: more
# epochs train on, workers and checkpoint_every change nothing in the result, another device only the rounding.
RESULT_OPTIONS = ("data", "weights", "lr", "batch_size", "trainable_layers", "seed", "crop")
DATA_OPTIONS = {"homography": ("images", "val_images", "pairs_per_epoch", "val_pairs", "strength", "night_probability"),
                "megadepth": ("dataset", "scene_info", "train_scenes", "val_scenes", "pairs_per_scene",
                              "max_scale_ratio")}


@dataclass
class TrainingResult:
    """What ``train`` left: the checkpoints, the lowest validation loss and every epoch's log record."""

    output: Path
    last: Path
    best: Path | None  # None without validation pairs
    best_val_loss: float | None
    epochs_done: int
    log: list[dict] = field(default_factory=list)  # log.jsonl's records, epoch 0 first where validated
    resumed_at: tuple[int, int] | None = None  # (epoch, step) this call resumed from


def _check_numbers(config: TrainingConfig) -> None:
    """The command's bounds, for a Python caller too: a bad value is one line naming the option."""
    check_numbers(config, epochs={"at_least": 1}, lr={"above": 0}, batch_size={"at_least": 1},
                  trainable_layers={"at_least": 1, "at_most": 10},  # conv4_3 ... all ten convolutions
                  workers={"at_least": 0, "at_most": MAX_LOADER_WORKERS}, checkpoint_every={"at_least": 1},
                  pairs_per_epoch={"at_least": 1}, val_pairs={"at_least": 0}, strength={"at_least": 0, "at_most": 1},
                  night_probability={"at_least": 0, "at_most": 1}, pairs_per_scene={"at_least": 1},
                  max_scale_ratio={"at_least": 1})
    if config.data not in DATA_KINDS:
        raise D2sfmError(f"--data {config.data!r}: choose {' or '.join(DATA_KINDS)}")
    if config.crop < MIN_CROP:
        cells = config.crop // 2 ** SCALING_STEPS
        raise D2sfmError(f"--crop {config.crop}: a crop of {config.crop} pixels has {cells} x {cells} feature cells, "
                         f"fewer than the {MIN_CORRESPONDENCES} correspondences a pair needs for the loss; use "
                         f"--crop {MIN_CROP} or more (default 256)")


def _scene_list(path: str | os.PathLike | None) -> list[str] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise D2sfmError(f"{path}: no such scene list; pass a text file with one scene name per line")
    return [line.strip() for line in read_text_file(path, "scene list").splitlines() if line.strip()]


def build_datasets(config: TrainingConfig):
    """(training set, validation set or None); every input is checked here, before anything is written."""
    if config.data == "homography":
        if config.images is None:
            raise D2sfmError("--data homography needs --images DIR (a folder of photos)")
        images = Path(config.images)
        if not images.is_dir():
            raise D2sfmError(f"{images}: no such folder; pass --images with a folder of photos")
        val_root = Path(config.val_images) if config.val_images is not None else images
        if not val_root.is_dir():
            raise D2sfmError(f"{val_root}: no such folder; pass --val-images with a folder of photos")
        common = dict(crop=config.crop, strength=config.strength, night_probability=config.night_probability)
        train_set = HomographyPairs(images, pairs_per_epoch=config.pairs_per_epoch, seed=config.seed, **common)
        val_set = HomographyPairs(val_root, list_images(val_root), pairs_per_epoch=config.val_pairs,
                                  seed=config.seed + 1000, **common) if config.val_pairs else None
        return train_set, val_set
    if config.dataset is None:
        raise D2sfmError("--data megadepth needs --dataset DIR (datasets/megadepth.md)")
    dataset = Path(config.dataset)
    info = Path(config.scene_info) if config.scene_info is not None else dataset / "scene_info"
    common = dict(pairs_per_scene=config.pairs_per_scene, max_scale_ratio=config.max_scale_ratio, crop=config.crop)
    train_set = MegaDepthPairs(dataset, info, _scene_list(config.train_scenes), seed=config.seed, **common)
    val_set = MegaDepthPairs(dataset, info, _scene_list(config.val_scenes), seed=42, **common) \
        if config.val_scenes else None
    if len(train_set) == 0:
        raise D2sfmError(f"{info}: no training pair passes the overlap and scale rules in the chosen scenes; choose "
                         "other scenes or a larger --max-scale-ratio")
    return train_set, val_set


def _weights_option(spec: Any) -> str | None:
    """The starting weights as a rerun can compare them: a known name, or an absolute path."""
    spec = spec if spec is not None else (os.environ.get("D2SFM_WEIGHTS") or DEFAULT_WEIGHTS)
    return str(spec) if str(spec) in KNOWN_WEIGHTS else str(Path(spec).expanduser().absolute())


def options_record(config: TrainingConfig) -> dict[str, Any]:
    """The config as JSON-ready values, paths absolute and the weights as used: what train.json and the
    checkpoints record (``args``, the key the original code uses)."""
    record = {}
    for option in dataclasses.fields(config):
        value = getattr(config, option.name)
        if option.name in PATH_OPTIONS + ("output",) and value is not None:
            value = str(Path(value).expanduser().absolute())
        record[option.name] = value
    record["weights"] = _weights_option(config.weights)
    return record


def _comparable(options: dict[str, Any]) -> dict[str, Any]:
    """The options of a record that change the result (also of one an earlier release wrote, with paths as typed
    and defaults left out), each as a rerun must repeat it."""
    values = {name: options.get(name) for name in RESULT_OPTIONS + DATA_OPTIONS.get(options.get("data"), ())}
    for name in PATH_OPTIONS:
        if values.get(name) is not None:
            values[name] = str(Path(values[name]).expanduser().absolute())
    if values["data"] == "homography" and values["val_images"] is None:
        values["val_images"] = values["images"]
    if values["data"] == "megadepth" and values["scene_info"] is None and values["dataset"] is not None:
        values["scene_info"] = str(Path(values["dataset"]) / "scene_info")
    return values


def _option_changes(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'--lr 0.001 -> 0.5' for each option that differs (only --data where the kind of data does)."""
    old, new = _comparable(saved), _comparable(wanted)
    if saved.get("weights") is None:  # an earlier release recorded only what was typed: unknown, not compared
        old["weights"] = new["weights"]
    names = RESULT_OPTIONS if old["data"] != new["data"] else list(new)
    return [f"--{name.replace('_', '-')} {old.get(name)} -> {new[name]}" for name in names
            if old.get(name) != new[name]]


def _entries(folder: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse, before anything is written or deleted, an output that training would damage: a file, or (to be
    overwritten, or holding a log or checkpoints) a folder that no training run has recorded as its own."""
    if not output.exists():
        return
    if not output.is_dir():
        raise D2sfmError(f"{output}: is a file, not a folder; choose a folder for --output")
    if (output / RECORD).is_file() or (output / CHECKPOINTS / "last.pth").is_file():
        return
    foreign = [name for name in _entries(output) if not is_housekeeping(name)]
    if overwrite and foreign:
        raise D2sfmError(f"{output}: not a d2sfm output folder (it holds {some_names(foreign)}); choose an empty or "
                         "new folder for --output")
    clash = [name for name in foreign if name.rstrip("/") in (LOG, CHECKPOINTS)]
    if clash:
        raise D2sfmError(f"{output}: holds {some_names(clash)} but no {RECORD}, so not a d2sfm training folder; "
                         "choose an empty or new folder for --output")


def _clear_output(output: Path) -> None:
    """--overwrite: delete what training writes (train.json, log.jsonl, checkpoints/last.pth and best.pth) and
    keep anything else, so that a user's file in the folder survives."""
    for path in (output / RECORD, output / LOG, *(output / CHECKPOINTS / name for name in CHECKPOINT_NAMES)):
        path.unlink(missing_ok=True)
    checkpoints = output / CHECKPOINTS
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    kept = [name for name in _entries(output) if not is_housekeeping(name)]
    if kept:
        log.info(f"  kept what training did not write in {output}: {some_names(kept)}")


def _read_resume(last: Path) -> dict:
    """The checkpoint to resume from; one line where it cannot be (damaged, or weights without a training state)."""
    try:
        content = read_checkpoint(last)
    except D2sfmError as error:
        reason = str(error).split(": ", 1)[-1].split(";")[0]
        raise D2sfmError(f"{last}: cannot resume from it ({reason}); pass --overwrite to start over, or choose "
                         "another --output") from None
    if not isinstance(content.get("training"), dict) or "optimizer" not in content:
        raise D2sfmError(f"{last}: holds weights but no training state to resume; pass --overwrite to start over, "
                         "or choose another --output")
    return content


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


def _history(output: Path, state: dict) -> list[dict]:
    """The log records of the epochs before the current one: kept in the checkpoint (an earlier release's is read
    back from log.jsonl), so that log.jsonl is written whole with every checkpoint and never disagrees with it."""
    if "history" in state:
        return list(state["history"])
    records = []
    path = output / LOG
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] < state["epoch"]:
                records.append(record)
    return records


def _format(loss: float | None) -> str:
    return "none (no usable pair)" if loss is None else f"{loss:.4f}"


def train(config: TrainingConfig) -> TrainingResult:
    """Train (or resume training) into ``config.output``; returns the checkpoints and the log. Every input and
    the output folder are checked before anything there is written or deleted."""
    _check_numbers(config)
    output = Path(config.output)
    train_set, val_set = build_datasets(config)
    device = resolve_device(config.device)
    check_output(output, config.overwrite)
    last = output / CHECKPOINTS / "last.pth"
    options = options_record(config)
    resumed = None
    if not config.overwrite and last.is_file():
        resumed = _read_resume(last)
        saved = resumed.get("args")
        changes = _option_changes(saved if isinstance(saved, dict) else {}, options)
        if changes:
            raise D2sfmError(f"{last}: trained with other options ({', '.join(changes)}); rerun with the options "
                             "it was trained with to resume, pass --overwrite to start over, or choose another "
                             "--output")
    weights = None if resumed else resolve_weights(config.weights, progress=config.progress)
    with folder_lock(output):
        if config.overwrite:
            _clear_output(output)
        (output / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / RECORD, json.dumps({"options": options}, indent=2) + "\n")
        return _train(config, options, output, train_set, val_set, device, resumed, weights)


def _train(config: TrainingConfig, options: dict, output: Path, train_set, val_set, device: torch.device,
           resumed: dict | None, weights: Path | None) -> TrainingResult:
    """The loop: epochs of steps, a mid-epoch checkpoint every ``checkpoint_every`` steps, validation, best.pth."""
    checkpoints = output / CHECKPOINTS
    last, best = checkpoints / "last.pth", checkpoints / "best.pth"
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if resumed:
        model = model_from_checkpoint(resumed, str(last), trainable_layers=config.trainable_layers)
    else:
        model = load_model(weights, trainable_layers=config.trainable_layers)
    model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    state: dict[str, Any] = {"epoch": 1, "step": 0, "best_val": None, "seconds": 0.0, "epoch_losses": []}
    resumed_at = None
    if resumed:
        try:
            optimizer.load_state_dict(resumed["optimizer"])
        except (ValueError, KeyError) as error:  # another set of trainable layers, from a run that did not say
            raise D2sfmError(f"{last}: its optimiser state does not fit --trainable-layers "
                             f"{config.trainable_layers} ({str(error).splitlines()[0]}); rerun with the layers it was "
                             "trained with, pass --overwrite to start over, or choose another --output") from None
        state.update(resumed["training"])
        state.setdefault("epoch_losses", [])
        resumed_at = (state["epoch"], state["step"])
    history = _history(output, state) if resumed else []

    def write_log() -> None:
        write_text_atomic(output / LOG, "".join(json.dumps(record) + "\n" for record in history))

    def save(path: Path, **changed) -> None:
        save_checkpoint(path, model, optimizer=optimizer.state_dict(),
                        training={**state, **changed, "history": history}, args=options)

    if resumed:
        if state["epoch"] > config.epochs:
            log.info(f"nothing to train: {last} has finished epoch {state['epoch'] - 1} of {config.epochs}; pass a "
                     "larger --epochs to train on, or --overwrite to start over")
        else:
            log.info(f"resuming {last}: epoch {state['epoch']}, step {state['step']}")
        write_log()  # as the checkpoint has it (a stop between the two may have left it an epoch short)
    else:
        (output / LOG).unlink(missing_ok=True)  # an earlier run's, stopped before its first checkpoint
        if val_set is not None:
            start_loss = _mean_loss(model, val_set, device, config.batch_size, config.progress)
            state["best_val"] = start_loss
            history.append({"epoch": 0, "val_loss": start_loss})
            write_log()
            log.info(f"validation loss before training: {_format(start_loss)}")
    while state["epoch"] <= config.epochs:
        epoch = state["epoch"]
        train_set.set_epoch(epoch)
        steps = -(-len(train_set) // config.batch_size)
        start_index = state["step"] * config.batch_size
        loader = DataLoader(Subset(train_set, range(start_index, len(train_set))), batch_size=config.batch_size,
                            num_workers=config.workers, worker_init_fn=end_with_this_process())
        losses, started = state["epoch_losses"], time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="step", total=steps, initial=state["step"],
                   disable=not config.progress)
        for batch in bar:
            loss, _ = batch_loss(model, batch, device)
            state["step"] += 1
            if loss is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            if state["step"] % config.checkpoint_every == 0 and state["step"] < steps:
                save(last, seconds=state["seconds"] + time.perf_counter() - started)
        state["seconds"] += time.perf_counter() - started
        val_loss = _mean_loss(model, val_set, device, config.batch_size, config.progress) \
            if val_set is not None else None
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": val_loss,
                  "steps_with_loss": len(losses), "seconds": state["seconds"]}
        history.append(record)
        if not losses:
            log.warning(f"warning: epoch {epoch}: none of its {steps} steps had a pair with the "
                        f"{MIN_CORRESPONDENCES} correspondences the loss needs, so the weights did not change; use a "
                        "larger --crop or a lower --strength")
        log.info(f"epoch {epoch}: train loss {_format(record['train_loss'])}, validation loss {_format(val_loss)}")
        state.update(epoch=epoch + 1, step=0, epoch_losses=[])
        if val_loss is not None and (state["best_val"] is None or val_loss < state["best_val"]):
            state["best_val"] = val_loss
            save(best)
        save(last)
        write_log()  # after the checkpoint: a stop between the two leaves the log one epoch short, never ahead
    if not last.is_file():  # no epoch to run at all (cannot happen with epochs >= 1, but the result must exist)
        save(last)
    log.info(f"done: {last}" + (f", best validation loss {state['best_val']:.4f} in {best}"
                                 if state["best_val"] is not None and best.is_file() else ""))
    return TrainingResult(output, last, best if best.is_file() else None, state["best_val"], state["epoch"] - 1,
                          history, resumed_at)
