"""The loss against the original D2-Net training code itself (``lib/loss.py``, ``lib/model.py``), on the same
MegaDepth-format pairs and weights: same loss, same gradient. Needs a local checkout of mihaidusmanu/d2-net,
given by ``D2SFM_D2NET_REFERENCE`` (it is not part of this repository or of ../shared); the equations themselves
are checked in CI by tests/training/test_training.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from d2sfm.features.checkpoint import load_model
from d2sfm.features.extractor import normalise
from d2sfm.training.data import MegaDepthPairs
from d2sfm.training.step import batch_loss
from pipelines.mini_megadepth import write_mini_megadepth

REFERENCE = os.environ.get("D2SFM_D2NET_REFERENCE")


@pytest.mark.skipif(not REFERENCE, reason="set D2SFM_D2NET_REFERENCE to a checkout of the original D2-Net code")
def test_loss_and_gradient_equal_the_original_training_code(tmp_path, weights_path):
    sys.path.insert(0, str(Path(REFERENCE)))
    from lib.loss import loss_function  # the reference checkout, imported at run time
    from lib.model import D2Net as OriginalD2Net

    write_mini_megadepth(tmp_path, count=4)
    original = OriginalD2Net(model_file=str(weights_path), use_cuda=False)
    ours = load_model(weights_path)
    pairs = MegaDepthPairs(tmp_path, tmp_path / "scene_info", pairs_per_scene=6, crop=192)
    compared = 0
    for batch in DataLoader(pairs, batch_size=2):
        theirs = dict(batch, image1=normalise(batch["image1"], "caffe").contiguous(),
                      image2=normalise(batch["image2"], "caffe").contiguous())
        original.zero_grad()
        ours.zero_grad()
        expected = loss_function(original, theirs, torch.device("cpu"))
        expected.backward()
        loss, _ = batch_loss(ours, batch, torch.device("cpu"))
        loss.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        expected_grad = list(original.dense_feature_extraction.model.parameters())[-2].grad
        assert (ours.layers[21].weight.grad - expected_grad).norm() <= 1e-4 * expected_grad.norm()
        compared += 1
    assert compared == 3
