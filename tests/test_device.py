"""Device selection: strict explicit devices, thread settings."""

from __future__ import annotations

import pytest
import torch

from schemas import ConfigError, DeviceConfig
from tasks.device import available_cores, available_devices, resolve_device, select_device


def test_cpu_is_always_available():
    assert available_devices()[0] == "cpu"


def test_auto_prefers_an_accelerator():
    assert resolve_device("auto", ("cpu",))[0] == "cpu"
    assert resolve_device("auto", ("cpu", "cuda:0", "cuda:1"))[0] == "cuda:0"
    assert resolve_device("auto", ("cpu", "mps"))[0] == "mps"


def test_missing_device_is_an_error_that_lists_what_is_there():
    with pytest.raises(ConfigError, match=r"device.name = 'cuda': not available on this machine; available: cpu$"):
        resolve_device("cuda", ("cpu",))
    with pytest.raises(ConfigError, match="available: cpu, cuda:0"):
        resolve_device("cuda:1", ("cpu", "cuda:0"))
    assert resolve_device("cuda", ("cpu", "cuda:0")) == ("cuda:0", "requested explicitly")


def test_select_device_sets_threads_to_the_usable_cores():
    old = torch.get_num_threads()
    try:
        info = select_device.fn(DeviceConfig(name="cpu"))
        assert info.device == "cpu" and info.torch_device == torch.device("cpu")
        assert info.threads == available_cores() == torch.get_num_threads()
        info = select_device.fn(DeviceConfig(name="cpu", threads=1))
        assert info.threads == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_requesting_cuda_without_it_fails_through_the_task():
    with pytest.raises(ConfigError, match="not available on this machine"):
        select_device.fn(DeviceConfig(name="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_is_selected_when_present():
    info = select_device.fn(DeviceConfig(name="cuda"))
    assert info.device == "cuda:0"
    assert torch.zeros(1, device=info.torch_device).device.type == "cuda"
