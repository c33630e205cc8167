"""The torch device a run uses: one choice of device for every command and API call, checked against what this
machine has, so that a wrong name is a one-line error instead of a crash inside the network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from d2sfm.errors import D2sfmError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """Map --device to a torch.device that this machine can run the network on: 'auto', 'cpu', 'cuda' or
    'cuda:N' with N below the number of GPUs, and 'mps' where torch says it is available. Anything else (torch's
    'meta', 'xpu', a GPU that is not there) is a one-line error naming the option, not a crash deep in the network.
    torch is imported here, not with this module, so that commands without a network (export, evaluate poses)
    start without paying for it."""
    import torch

    name = name.strip()
    if name.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "use --device auto, cpu or cuda[:N]"
    try:
        device = torch.device(name.lower())
    except (RuntimeError, ValueError, TypeError):
        raise D2sfmError(f"--device {name!r} is not a device name; {choices}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise D2sfmError(f"--device {name!r}: there is one CPU device; use --device cpu")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise D2sfmError(f"--device {name!r} was asked for but this torch has no usable CUDA GPU; "
                             "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise D2sfmError(f"--device {name!r}: this machine has {count} CUDA GPU{'s' if count != 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1}); use one of those or --device cpu")
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise D2sfmError(f"--device {name!r}: Apple's MPS is not available in this torch on this machine; "
                             "use --device cpu")
        if device.index not in (None, 0):
            raise D2sfmError(f"--device {name!r}: there is one MPS device; use --device mps")
        return torch.device("mps")
    raise D2sfmError(f"--device {name!r}: d2sfm runs only on CPU, CUDA GPUs or Apple's MPS, not on torch's "
                     f"{device.type!r} devices; {choices}")


def full_float32_cudnn(benchmark: bool | None = None):
    """A block where cuDNN computes float32 convolutions in full float32: TF32, which rounds their inputs to about
    1e-3, is off. ``torch.backends.cudnn.flags`` sets every cuDNN flag, not only the ones passed, so the process's
    other settings (benchmark, its limit, deterministic) are passed through as the user set them; ``benchmark``
    True turns cuDNN's timing of algorithms on for the block (it pays where few input sizes recur)."""
    import torch

    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=True, benchmark=cudnn.benchmark if benchmark is None else benchmark,
                       benchmark_limit=cudnn.benchmark_limit, deterministic=cudnn.deterministic, allow_tf32=False)
