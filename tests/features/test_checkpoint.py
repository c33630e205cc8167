import argparse
import os
import subprocess
import sys

import pytest
import torch

from d2sfm.errors import D2sfmError
from d2sfm.features.checkpoint import load_model, read_checkpoint, save_checkpoint, validate_state_dict
from d2sfm.features.network import D2Net


class _RunsCodeWhenUnpickled:
    """A booby trap: unpickling it would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(error: D2sfmError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_round_trip_keeps_weights_and_training_metadata(tmp_path):
    model = D2Net()
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, args=argparse.Namespace(lr=1e-3), epoch_idx=3)
    content = read_checkpoint(path)
    assert content["args"].lr == 1e-3 and content["epoch_idx"] == 3
    loaded = load_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert not list(tmp_path.glob("*.part"))


def test_booby_trapped_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": D2Net().state_dict(), "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(D2sfmError) as caught:
        read_checkpoint(path)
    assert "refused" in _one_line(caught.value) and str(path) in str(caught.value)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(D2sfmError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(text)
    for content in ("not a checkpoint\n", "<html><body>404 Not Found</body></html>"):  # not "could run code"
        text.write_text(content)
        with pytest.raises(D2sfmError, match="not a (readable )?PyTorch checkpoint"):
            read_checkpoint(text)
    bare = tmp_path / "bare.pth"
    torch.save(D2Net().state_dict(), bare)  # a state dict without the {'model': ...} wrapper
    with pytest.raises(D2sfmError, match="not a D2-Net checkpoint"):
        read_checkpoint(bare)
    with pytest.raises(D2sfmError, match="no such weights file"):
        read_checkpoint(tmp_path / "missing.pth")


def test_missing_unexpected_and_misshapen_keys_are_named():
    state = D2Net().state_dict()
    missing = dict(state)
    del missing["dense_feature_extraction.model.21.weight"]
    with pytest.raises(D2sfmError, match=r"missing keys \['dense_feature_extraction.model.21.weight'\]"):
        validate_state_dict(missing, "x.pth")
    extra = {**state, "head.weight": torch.zeros(1)}
    with pytest.raises(D2sfmError, match="unexpected keys"):
        validate_state_dict(extra, "x.pth")
    wrong = {**state, "dense_feature_extraction.model.0.weight": torch.zeros(64, 3, 5, 5)}
    with pytest.raises(D2sfmError) as caught:
        validate_state_dict(wrong, "x.pth")
    assert "(64, 3, 5, 5)" in _one_line(caught.value)


def test_command_line_reports_a_bad_weights_file_in_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    import cv2
    import numpy as np
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    result = subprocess.run(
        [sys.executable, "-m", "d2sfm.extract", str(tmp_path / "images"), "--weights", str(bad),
         "-o", str(tmp_path / "f.h5")], capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
