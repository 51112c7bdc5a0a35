"""Device, precision, AdamW8bit and memory on a GPU, with a fake torch in the probe's child process and a
fake nvidia-smi (tests/fake_gpu): the real probe code runs, only what it talks to is fake."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cml.device import Gpu, probe, resolve_device
from cml.errors import InputError
from tests.fake_gpu_env import A100, FAKE, OLD_DRIVER, RTX2080, fake_caches_in_tmp, fake_env  # noqa: F401  (fake_caches_in_tmp: autouse)


@pytest.fixture
def gpu_env(monkeypatch):
    """Point the probe (and nvidia-smi) of this process's children at the fakes."""

    def use(cuda: dict, nvidia_smi: bool = True) -> None:
        for k, v in fake_env(cuda, nvidia_smi).items():
            monkeypatch.setenv(k, v)

    return use


def test_probe_reads_the_gpu_from_a_child_process(gpu_env):
    gpu_env(RTX2080)
    pr = probe()
    assert pr.torch == "9.9.9+fake" and pr.gpu == Gpu("NVIDIA GeForce RTX 2080", 8 * 2**30, (7, 5), pr.gpu.bnb_error)
    assert "fake bitsandbytes" in pr.gpu.bnb_error  # one real 8-bit step is the test: here it cannot even import
    assert "torch" not in sys.modules or "fake" not in str(getattr(sys.modules["torch"], "__version__", ""))


def test_auto_falls_back_to_cpu_only_without_an_nvidia_gpu(gpu_env):
    gpu_env({}, nvidia_smi=False)
    if Path("/proc/driver/nvidia/gpus").is_dir():
        pytest.skip("this machine has an NVIDIA driver")
    device, gpu, notes = resolve_device("auto")
    assert (device, gpu) == ("cpu", None) and "no CUDA GPU found" in notes[0]
    with pytest.raises(InputError, match='device = "cuda" but CUDA is not usable'):
        resolve_device("cuda")


def test_a_gpu_torch_cannot_use_is_an_error_not_a_cpu_run(gpu_env):
    gpu_env(OLD_DRIVER)
    with pytest.raises(InputError) as e:
        resolve_device("auto")
    line = e.value.line()
    assert "an NVIDIA GPU is present (NVIDIA GeForce RTX 3070) but torch 9.9.9+fake (CUDA 12.4) cannot use it" in line
    assert "driver on your system is too old" in line and "TORCH_INDEX=" in line
    assert resolve_device("cpu") == ("cpu", None, [])  # asked for on purpose


def test_adamw8bit_kept_where_the_probe_step_worked(write_preset):
    from cml.inputs import load_inputs
    from cml.preset import load_preset
    from cml.stages import build_plan

    preset, digest = load_preset(write_preset())
    inputs = load_inputs(preset)
    inputs.device, inputs.gpu = "cuda", Gpu("NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0), None)
    plan = build_plan(preset, digest, inputs, None)
    copy = plan.stage("copy")
    assert copy.settings.optimizer == "AdamW8bit" and copy.settings.precision == "bf16" and not copy.notes
