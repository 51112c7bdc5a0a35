"""The device through the CLI and the probe child (fake torch, fake nvidia-smi)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT, make_checkpoint, run_cml
from tests.fake_gpu_env import A100, FAKE, OLD_DRIVER, RTX2080, fake_caches_in_tmp, fake_env  # noqa: F401  (fake_caches_in_tmp: autouse)


def test_unusable_gpu_refuses_the_run_and_doctor_exits_1(write_preset, fake_sd, tmp_path):
    p = write_preset(device="auto")
    env = fake_env(OLD_DRIVER)
    r = run_cml("run", str(p), "--sd-scripts", fake_sd, env=env)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:")]
    assert len(errors) == 1 and "an NVIDIA GPU is present" in errors[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()
    d = run_cml("doctor", "--sd-scripts", fake_sd, env=env)
    assert d.returncode == 1
    assert "!! device" in d.stdout and "cannot use it" in d.stdout and "TORCH_INDEX" in d.stdout


def plan_files(write_preset, tmp_path, fake_sd, cuda: dict, **top) -> tuple[dict, dict, str]:
    p = write_preset(device="auto", **top)
    r = run_cml("plan", str(p), "--sd-scripts", fake_sd, env=fake_env(cuda))
    assert r.returncode == 0, r.stderr
    copy = tmp_path / "runs" / "t" / "copy"
    return tomllib.loads((copy / "train.toml").read_text()), json.loads((copy / "gui.json").read_text()), r.stderr


@pytest.mark.parametrize("cuda,want", [(RTX2080, "fp16"), (A100, "bf16")])
def test_auto_precision_follows_compute_capability_in_every_file(write_preset, tmp_path, fake_sd, cuda, want):
    train, gui, err = plan_files(write_preset, tmp_path, fake_sd, cuda)
    assert train["mixed_precision"] == gui["mixed_precision"] == want
    assert f"precision {want}" in err and cuda["name"] in err
    sh = (tmp_path / "runs" / "t" / "commands.sh").read_text()
    assert "--config_file" in sh and "mixed_precision" not in sh  # commands.sh runs train.toml: one source of truth


def test_cpu_precision_is_fp32_in_train_toml_and_gui_json(write_preset, tmp_path, fake_sd):
    p = write_preset()  # device = "cpu"
    assert run_cml("plan", str(p), "--sd-scripts", fake_sd).returncode == 0
    copy = tmp_path / "runs" / "t" / "copy"
    assert tomllib.loads((copy / "train.toml").read_text())["mixed_precision"] == "no"
    assert json.loads((copy / "gui.json").read_text())["mixed_precision"] == "no"


def test_bf16_on_a_gpu_without_native_bf16_is_refused(write_preset, fake_sd, tmp_path):
    p = write_preset(device="auto", train={"steps": 3, "resolution": 64, "precision": "bf16"})
    r = run_cml("plan", str(p), "--sd-scripts", fake_sd, env=fake_env(RTX2080))
    assert r.returncode == 2 and "has no native bf16" in r.stderr and not (tmp_path / "runs").exists()


def test_sdxl_in_half_precision_keeps_its_vae_in_fp32(write_preset, tmp_path, fake_sd):
    sdxl = make_checkpoint(tmp_path / "xl.safetensors", "sdxl")
    train, gui, _ = plan_files(write_preset, tmp_path, fake_sd, RTX2080, base_model=str(sdxl))
    assert train["mixed_precision"] == "fp16" and train["no_half_vae"] is True and gui["sdxl_no_half_vae"] is True
    assert train["gradient_checkpointing"] is True and gui["gradient_checkpointing"] is True  # SDXL default
    train, gui, _ = plan_files(
        write_preset,
        tmp_path,
        fake_sd,
        RTX2080,
        base_model=str(sdxl),
        train={"steps": 3, "resolution": 64, "precision": "fp32", "gradient_checkpointing": False},
    )
    assert "no_half_vae" not in train and gui["sdxl_no_half_vae"] is False
    assert train["gradient_checkpointing"] is False  # a preset can turn it off
    train, gui, _ = plan_files(write_preset, tmp_path, fake_sd, RTX2080)  # SD1.5 in fp16: its VAE is fine
    assert "no_half_vae" not in train and train["gradient_checkpointing"] is False


def test_adamw8bit_falls_back_with_the_probes_reason(write_preset, tmp_path, fake_sd):
    train, gui, err = plan_files(write_preset, tmp_path, fake_sd, RTX2080)
    assert train["optimizer_type"] == gui["optimizer"] == "AdamW"
    assert "AdamW8bit cannot run here (one AdamW8bit step failed on NVIDIA GeForce RTX 2080: ImportError: fake bitsandbytes" in err


def test_gpu_memory_is_reported_before_each_training_stage(write_preset, fake_sd):
    p = write_preset(device="auto")
    env = fake_env(A100)
    r = run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("NVIDIA A100-SXM4-40GB: 6.8 GiB of 8.0 GiB free") == 2  # copy and diff, not the merge


def test_cml_never_imports_torch_with_device_auto(write_preset, fake_sd):
    """The default device = "auto" probes in a child process: cml's own process never imports torch."""
    p = write_preset(device="auto")
    code = (
        "import sys; from cml.cli import main; rc = main(['plan', sys.argv[1], '--sd-scripts', sys.argv[2]]); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(p), fake_sd], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "device: " in r.stderr  # the probe did run
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"
