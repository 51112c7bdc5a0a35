"""The article's recipe on a CUDA GPU: what the trainer says it ran, memory, the copy machine, the method."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from cml.dev.bench_gpu import LOG_MARKERS, UNET_DTYPE
from cml.validate import validate_lora
from tests.conftest import run_cml

pytestmark = pytest.mark.gpu

GIB = 1024  # MiB
SD15_PEAK_GIB = 7.5  # fits an 8 GB card (the article's RTX 3070)
SDXL_PEAK_GIB = 22.0  # fits a 24 GB card


def train_stages(run: dict) -> list[str]:
    return [s for s in run["stages"] if s != "merge"]


def get_run(results: dict, name: str) -> dict:
    """A run of this bench; a run left out (BENCH_GPU_ARGS="--only ...") skips its tests, saying so."""
    run = results["runs"].get(name)
    if run is None:
        pytest.skip(f"the bench run {name!r} is not in these results (BENCH_GPU_ARGS --only)")
    assert run.get("finished", True), f"{name} was cut short: {run.get('failed')}"
    return {**run, "run_dir": str(Path(results["base"]) / run["run_dir"])}  # stored relative to the results file


def test_doctor_is_ready_and_adamw8bit_steps_on_the_gpu(gpu, tmp_path):
    import shutil

    from cml.demo import tokenizer_dir

    shutil.copytree(tokenizer_dir(), tmp_path / "tokenizers")  # offline GPU machines: the tokenizer is cached
    r = run_cml("doctor", env={"CML_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok device" in r.stdout and gpu.name in r.stdout
    assert "one AdamW8bit step ran on the GPU" in r.stdout, r.stdout


@pytest.mark.parametrize("name", ["sd15", "sd15-in-memory", "sdxl"])
def test_trainer_log_shows_cuda_precision_adamw8bit_sdpa(gpu_results, gpu, name):
    run = get_run(gpu_results, name)
    want = "bfloat16" if gpu.bf16 else "float16"
    for st in train_stages(run):
        stage_dir = Path(run["run_dir"]) / st
        log = (stage_dir / "log.txt").read_text(errors="replace")
        for what, marker in LOG_MARKERS.items():
            assert marker in log, f"{name}/{st}: the trainer never printed {marker!r} ({what})"
        dtypes = UNET_DTYPE.findall(log)
        assert dtypes and all(d == want and dev.startswith("cuda") for d, dev in dtypes), f"{name}/{st}: {dtypes}"
        assert "[cml] stopped" not in log
        toml = (stage_dir / "train.toml").read_text()
        assert re.search(rf'mixed_precision = "{"bf16" if gpu.bf16 else "fp16"}"', toml)
        gui = json.loads((stage_dir / "gui.json").read_text())
        assert gui["mixed_precision"] == ("bf16" if gpu.bf16 else "fp16")
        if name == "sdxl":
            assert "no_half_vae = true" in toml and gui["sdxl_no_half_vae"] is True
            assert "gradient_checkpointing = true" in toml


@pytest.mark.parametrize("name", ["sd15", "sd15-in-memory", "sdxl"])
def test_losses_are_finite_and_loras_pass_their_check(gpu_results, name):
    run = get_run(gpu_results, name)
    for st in train_stages(run):
        assert run["stages"][st]["losses_finite"], f"{name}/{st}"
        rec = json.loads((Path(run["run_dir"]) / st / "record.json").read_text())
        assert rec["losses"] and all(math.isfinite(x) for x in rec["losses"])
        lora = next((Path(run["run_dir"]) / st).glob("*.safetensors"))
        validate_lora(lora, 16, 16.0)


@pytest.mark.parametrize("name,limit", [("sd15", SD15_PEAK_GIB), ("sd15-in-memory", SD15_PEAK_GIB), ("sdxl", SDXL_PEAK_GIB)])
def test_peak_gpu_memory_fits_the_card(gpu_results, name, limit):
    run = get_run(gpu_results, name)
    for st in train_stages(run):
        peak = run["stages"][st]["peak_gpu_mib_over_idle"]
        assert peak is not None and peak > 0, f"{name}/{st}: no GPU memory samples"
        assert peak / GIB <= limit, f"{name}/{st}: peak {peak / GIB:.2f} GiB > {limit} GiB"


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_copy_machine_model_passes_its_check(gpu_results, name):
    run = get_run(gpu_results, name)
    rec = json.loads((Path(run["run_dir"]) / "merge" / "record.json").read_text())
    assert rec["merge_check"]["unet_tensors_changed"] > 0
    assert (Path(run["run_dir"]) / "merge" / "copy_machine.safetensors").is_file()


def test_both_merge_modes_train_the_same_modules(gpu_results):
    keys = []
    for name in ("sd15", "sd15-in-memory"):
        lora = Path(get_run(gpu_results, name)["run_dir"]) / "diff-grayscale" / "grayscale.safetensors"
        keys.append(set(validate_lora(lora, 16, 16.0).keys))
    assert keys[0] == keys[1]


def test_cml_itself_holds_no_cuda_context(gpu_results):
    for name, run in gpu_results["runs"].items():
        assert run["cml_libcuda"] == [], f"{name}: cml's own process loaded {run['cml_libcuda']}"
