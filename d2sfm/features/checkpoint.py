"""Reading and writing D2-Net checkpoints in the official layout, ``{'model': state_dict, ...}``, safely.

A checkpoint is a pickle, and unpickling can run arbitrary code, so files are read with ``weights_only=True``:
only tensors, containers and an allow-list of harmless classes that training scripts store beside the state dict
(the original ``train.py`` saves its ``argparse.Namespace``) can be rebuilt. Anything else is refused in one line.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from d2sfm.errors import D2sfmError
from d2sfm.features.network import D2Net
from d2sfm.io.atomic import atomic_path

SAFE_EXTRA_TYPES = [argparse.Namespace]


def _expected_shapes() -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in D2Net().state_dict().items()}


def _is_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; the legacy format is a pickle, whose first byte is the PROTO opcode."""
    with open(path, "rb") as handle:
        return zipfile.is_zipfile(handle) or handle.seek(0) == 0 and handle.read(1) == b"\x80"


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, in d2sfm's words: its message spans lines, carries terminal
    colour codes and advises loading with ``weights_only=False``, which would run the file's code."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"it names {found.group(1)}, which is neither a tensor nor a plain container"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return f"pickle instruction {found.group(1)} is not allowed in a weights-only checkpoint"
    return "objects other than tensors and plain containers"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle a checkpoint without executing code from it; D2sfmError for anything that is not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise D2sfmError(f"{path}: no such weights file; pass --weights with an existing .pth file or a known name")
    try:
        # torch's own warnings (the pickle protocol, how to load unsafely) would print beside the one-line error
        with warnings.catch_warnings(), torch.serialization.safe_globals(SAFE_EXTRA_TYPES):
            warnings.simplefilter("ignore")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _is_torch_file(path):  # a text file, an HTML error page saved as .pth: not a pickle at all
            raise D2sfmError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle); download it "
                             "again or pass another --weights") from None
        reason = _refusal_reason(error)
        raise D2sfmError(
            f"{path}: refused to load, the file holds objects that could run code ({reason}); "
            "use a checkpoint that stores only tensors"
        ) from None
    except Exception as error:  # a malformed pickle can fail in many ways (KeyError, EOFError, zip errors...)
        raise D2sfmError(
            f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}); the file may be truncated or "
            "of another kind: download it again or pass another --weights"
        ) from None
    if not isinstance(content, dict) or "model" not in content or not isinstance(content["model"], dict):
        raise D2sfmError(
            f"{path}: not a D2-Net checkpoint (expected a dict with a 'model' state dict, as the official "
            "d2_tf.pth); pass another --weights"
        )
    return content


def validate_state_dict(state: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Check names and shapes against the D2-Net layout; one line naming the first problems found."""
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise D2sfmError(f"{source}: not a D2-Net state dict ({'; '.join(parts)}); pass a D2-Net checkpoint")
    for name, shape in expected.items():
        value = state[name]
        if not isinstance(value, torch.Tensor) or value.shape != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise D2sfmError(f"{source}: {name} has shape {got}, D2-Net needs {tuple(shape)}; wrong model file")
    return {name: state[name].float() for name in expected}


def load_model(path: str | os.PathLike, use_relu: bool = True, trainable_layers: int = 1) -> D2Net:
    """Build a D2Net and load weights from an official-layout checkpoint."""
    return model_from_checkpoint(read_checkpoint(path), str(path), use_relu, trainable_layers)


def model_from_checkpoint(content: dict[str, Any], source: str, use_relu: bool = True,
                          trainable_layers: int = 1) -> D2Net:
    """A D2Net from a checkpoint already read with :func:`read_checkpoint` (e.g. to resume training from it)."""
    state = validate_state_dict(content["model"], source)
    model = D2Net(use_relu=use_relu, trainable_layers=trainable_layers)
    model.load_state_dict(state)
    return model


def save_checkpoint(path: str | os.PathLike, model: D2Net, **extra: Any) -> None:
    """Write ``{'model': state_dict, **extra}`` atomically, readable by the original D2-Net code and by us."""
    with atomic_path(path) as temporary:
        torch.save({"model": model.state_dict(), **extra}, temporary)
