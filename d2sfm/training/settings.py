"""What training can be told, apart from the code that does it: ``python -m d2sfm.train --help`` and its option
checks import this without torch."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

DATA_KINDS = ("homography", "megadepth")
SCALING_STEPS = 3  # the training network's three stride-2 pools: output stride 8
MIN_CORRESPONDENCES = 128  # cells with a ground-truth correspondence a pair needs to give a loss
# A pair needs MIN_CORRESPONDENCES cells with a correspondence on the stride-8 map: a smaller crop has fewer cells
# than that, so no pair could ever give a loss and the run would train nothing.
MIN_CROP = 2**SCALING_STEPS * math.ceil(math.sqrt(MIN_CORRESPONDENCES))


@dataclass(frozen=True)
class TrainingConfig:
    """Every option of ``python -m d2sfm.train`` (same names, ``--batch-size`` is ``batch_size``)."""

    data: str  # "homography": pairs made from ``images``; "megadepth": ``dataset`` in the D2-Net format
    output: str | os.PathLike = "outputs/train"  # train.json, log.jsonl, checkpoints/; a rerun resumes
    epochs: int = 10
    lr: float = 1e-3  # Adam's learning rate
    batch_size: int = 1  # pairs per step
    trainable_layers: int = 1  # the last N conv layers train: 1 is conv4_3 only (the paper), up to 10
    seed: int = 1  # seeds the pairs and torch
    workers: int = 0  # data loader processes
    checkpoint_every: int = 200  # also save last.pth every N steps inside an epoch
    # homography pairs
    images: str | os.PathLike | None = None  # folder of training photos
    val_images: str | os.PathLike | None = None  # folder of validation photos (None: the training photos)
    pairs_per_epoch: int = 1000
    val_pairs: int = 100  # 0: no validation
    strength: float = 0.6  # homography strength in [0, 1]
    night_probability: float = 0.3  # share of pairs whose second image is night-like
    crop: int = 256  # crop size in pixels (both kinds)
    # MegaDepth
    dataset: str | os.PathLike | None = None  # root: image and depth paths are relative to it
    scene_info: str | os.PathLike | None = None  # default dataset/scene_info
    train_scenes: str | os.PathLike | None = None  # file listing the training scenes (None: all)
    val_scenes: str | os.PathLike | None = None  # file listing the validation scenes (None: no validation)
    pairs_per_scene: int = 100
    max_scale_ratio: float = 1.5
    # where and how; nothing here changes the result
    weights: str | os.PathLike | None = None  # starting weights: a path or a known name (None: $D2SFM_WEIGHTS or d2_tf)
    device: str = "auto"
    overwrite: bool = False  # start over instead of resuming (deletes only what training wrote in output)
    progress: bool = True  # progress bars
