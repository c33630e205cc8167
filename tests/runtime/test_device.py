"""The device choice and the cuDNN block every float32 convolution on a GPU runs in."""

import pytest
import torch

from d2sfm.errors import D2sfmError
from d2sfm.runtime.device import full_float32_cudnn, resolve_device


def test_device_names_resolve_or_fail_in_one_line():
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(D2sfmError, match="not a device name"):
        resolve_device("gpu please")
    with pytest.raises(D2sfmError, match="one CPU device"):
        resolve_device("cpu:1")


@pytest.fixture
def cudnn_settings():
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
    yield cudnn
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved


def test_full_float32_turns_tf32_off_and_keeps_the_users_other_cudnn_settings(cudnn_settings):
    """torch.backends.cudnn.flags alone resets benchmark and deterministic to False inside its block: a user who
    set them for the process would lose them in every extraction."""
    cudnn = cudnn_settings
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = True, True, True
    with full_float32_cudnn():
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == (True, True, False)
    with full_float32_cudnn(benchmark=False):  # GpuTuning may ask for a setting of its own
        assert not cudnn.benchmark and cudnn.deterministic
    assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == (True, True, True)  # restored after
    cudnn.benchmark = False
    with full_float32_cudnn(benchmark=True):
        assert cudnn.benchmark
    assert not cudnn.benchmark
