"""FLUX.1, SD3 and Anima end to end on toy model files (cml/sd_process/toy_models.py: random weights; FLUX.1 with
the fewest blocks its loader accepts, SD3 at depth 1, Anima at its loader's fixed 2.1B size; sparse all-zero text
encoders at their fixed sizes), with sd-scripts' own trainers, merges and sampling: copy -> merge -> diff -> the
check, as `cml run` does it. Each needs the machine alone (make test-slow): 10-13 GiB of RAM, minutes on 2 cores.

No effect can be measured on random weights: what is asserted is that every stage ran the family's own code, and
that the files are what they must be (valid LoRAs of the family's keys, a copy machine model that differs from its
base in the DiT only, the check's images)."""

from __future__ import annotations

import json

import pytest
import tomli_w

from cml.safetensors_file import read_metadata
from cml.validate import validate_lora
from tests.comfyui_keys import not_loaded
from tests.conftest import run_cml

pytestmark = pytest.mark.slow

# The CPU runs bf16 (fp32 T5-XXL alone needs 19 GiB), which AVX2-only CPUs run ~100x slower than fp32 (a 3072-wide
# matmul: 17 s against 0.17 s): one step per stage; T5's and Qwen3's token lengths short (the encoders run once a stage).
CPU = {"precision": "bf16", "resolution": 64, "steps": 1}


def run_family(tmp_path, name: str, base, model_files: dict, tokenizers, merge: str, extra: dict, precision: str = "bf16", **top):
    p = tmp_path / f"{name}.toml"
    preset = {
        "version": 2,
        "name": name,
        "base_model": str(base),
        "model_files": {k: str(v) for k, v in model_files.items()},
        "source": str(top.pop("a")),
        "tokenizer_cache_dir": str(tokenizers),
        "output_dir": str(tmp_path / "runs"),
        "device": "cpu",
        "merge": merge,
        "targets": {"grayscale": {"transform": "grayscale"}},
        "train": {**CPU, "precision": precision, "extra": extra},
        # the check at its smallest (a DiT forward in bf16 takes ~25 s here): the copy check and a sweep on the copy machine
        "check": {
            "enabled": True,
            "weights": [0.0, 1.0],
            "seeds": [1],
            "prompts": [""],
            "sampling_steps": 1,
            "guidance_scale": 1.0,
            "base": False,
            "copy_check_base": False,
        },
        **top,
    }
    p.write_text(tomli_w.dumps(preset))
    r = run_cml("run", str(p), "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp_path / "runs" / name


def diffusers_flux_modules_missing(lora) -> list[str]:
    """diffusers' own FLUX.1 LoRA loading (FluxPipeline.lora_state_dict: its kohya converter, which raises on a key
    it cannot place) and the converted names against a FluxTransformer2DModel of the toy's depth, built on meta:
    the lora_A/lora_B pairs whose module is missing or of another shape."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    converted = FluxPipeline.lora_state_dict(str(lora))
    assert converted and all(k.startswith("transformer.") for k in converted)
    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    modules = dict(model.named_modules())
    bad = []
    for k, v in converted.items():
        name, part = k.removeprefix("transformer.").rsplit(".lora_", 1)
        m = modules.get(name)
        if m is None or not isinstance(m, torch.nn.Linear):
            bad.append(k)
        elif (part == "A.weight" and v.shape[1] != m.in_features) or (part == "B.weight" and v.shape[0] != m.out_features):
            bad.append(f"{k}: {tuple(v.shape)} against {m}")
    return bad


def assert_family_run(run, trainer: str, merged: bool, checked: bool = True):
    for stage in ("copy", "diff-grayscale"):
        log = (run / stage / "log.txt").read_text()
        assert f"-m cml.sd_process.train {trainer}" in log.splitlines()[0]
        rec = json.loads((run / stage / "record.json").read_text())
        assert rec["losses"] and all(x == x for x in rec["losses"])  # finite
    lora = run / "diff-grayscale" / "grayscale.safetensors"
    s = validate_lora(lora, 16, 16.0)
    assert s.modules > 0 and all(k.startswith("lora_unet_") for k in s.keys)
    meta = read_metadata(lora)
    assert meta["cml_stage"] == "diff-grayscale" and meta["cml_trained_against"] == "copy machine model"
    if merged:
        rec = json.loads((run / "merge" / "record.json").read_text())
        assert rec["merge_check"]["unet_tensors_changed"] > 0  # the copy machine model differs from its base in the DiT
    else:
        toml = (run / "diff-grayscale" / "train.toml").read_text()
        assert "base_weights" in toml and not (run / "merge").exists()  # the copy LoRA merged in memory
    if not checked:
        return meta
    metrics = json.loads((run / "check" / "metrics.json").read_text())
    assert metrics["copy_check"]["seeds"] and "grayscale" in metrics["targets"]
    assert (run / "report.md").is_file()
    return meta


@pytest.fixture(scope="module")
def toys(sd_scripts, demo_assets):
    from cml.demo import toy_tokenizers

    return {"tokenizers": toy_tokenizers(sd_scripts.path), "a": demo_assets["a"], "sd": sd_scripts.path}


def test_flux_dev_copy_merge_diff_and_check(toys, tmp_path):
    """FLUX.1 dev, 1 double and 1 single block: flux_train_network.py, flux_merge_lora.py into a copy machine model,
    and the check drawn by the trainer's own sampling."""
    from cml.demo import toy_model

    t = toy_model("flux", toys["sd"])
    files = {k: t / f"{k}.safetensors" for k in ("clip_l", "t5xxl", "ae")}
    run = run_family(tmp_path, "flux", t / "flux.safetensors", files, toys["tokenizers"], "checkpoint", {"t5xxl_max_token_length": 8}, a=toys["a"])
    meta = assert_family_run(run, "flux_train_network", merged=True)
    assert meta["ss_network_module"] == "networks.lora_flux"
    assert not not_loaded(run / "diff-grayscale" / "grayscale.safetensors", t / "flux.safetensors")  # ComfyUI's key mapping
    assert not diffusers_flux_modules_missing(run / "diff-grayscale" / "grayscale.safetensors")  # and diffusers' converter
    toml = (run / "diff-grayscale" / "train.toml").read_text()
    assert 'timestep_sampling = "shift"' in toml and "discrete_flow_shift = 3.1582" in toml and 'model_prediction_type = "raw"' in toml


def test_sd3_copy_merge_diff_and_check(toys, tmp_path):
    """SD3 with an MMDiT of depth 1 (its size read from the file): sd3_train_network.py, the copy machine model
    written by sd-scripts' own functions (cml/sd_process/merge.py), and the check drawn by the trainer's sampling."""
    from cml.demo import toy_model

    t = toy_model("sd3", toys["sd"])
    files = {k: t / f"{k}.safetensors" for k in ("clip_l", "clip_g", "t5xxl")}
    run = run_family(tmp_path, "sd3", t / "sd3.safetensors", files, toys["tokenizers"], "checkpoint", {"t5xxl_max_token_length": 8}, a=toys["a"])
    meta = assert_family_run(run, "sd3_train_network", merged=True)
    assert meta["ss_network_module"] == "networks.lora_sd3"
    assert not not_loaded(run / "diff-grayscale" / "grayscale.safetensors", t / "sd3.safetensors")  # ComfyUI's key mapping
    assert "-m cml.sd_process.merge sd3" in (run / "merge" / "log.txt").read_text().splitlines()[0]


def test_anima_in_memory_diff_check_and_the_comfyui_file(toys, tmp_path):
    """Anima at its loader's fixed 2.1B size (random weights) with a one-layer Qwen3 folder, in fp32 (no T5-XXL: it
    fits): anima_train_network.py with the copy LoRA merged in memory, the check, and the ComfyUI file written by
    sd-scripts' converter."""
    from cml.demo import toy_model

    t = toy_model("anima", toys["sd"])
    files = {"qwen3": t / "qwen3", "vae": t / "vae.safetensors"}
    run = run_family(tmp_path, "anima", t / "anima.safetensors", files, toys["tokenizers"], "in_memory", {"qwen3_max_token_length": 8}, "fp32", a=toys["a"])
    meta = assert_family_run(run, "anima_train_network", merged=False)
    assert meta["ss_network_module"] == "networks.lora_anima"
    comfy = run / "comfy-grayscale" / "grayscale_comfy.safetensors"
    from cml.validate import validate_comfy_lora

    assert validate_comfy_lora(comfy, run / "diff-grayscale" / "grayscale.safetensors") > 0


@pytest.mark.parametrize("name, merge", [("flux", "in_memory"), ("sd3", "in_memory"), ("anima", "checkpoint")])
def test_the_other_merge_route(toys, tmp_path, name, merge):
    """Each family's second merge route (the tests above run the first, with the check): FLUX.1 and SD3 with the
    copy LoRA merged in memory (--base_weights: lora_flux's and lora_sd3's merge_to), Anima into a copy machine model
    by sd-scripts' own merge-at-load and save_anima_model (cml/sd_process/merge.py). No check: copy, merge, diff."""
    from cml.demo import toy_model

    t = toy_model(name, toys["sd"])
    parts = {"flux": ("clip_l", "t5xxl", "ae"), "sd3": ("clip_l", "clip_g", "t5xxl"), "anima": ()}[name]
    files = {k: t / f"{k}.safetensors" for k in parts}
    extra = {"t5xxl_max_token_length": 8}
    precision = "bf16"
    if name == "anima":
        files, extra, precision = {"qwen3": t / "qwen3", "vae": t / "vae.safetensors"}, {"qwen3_max_token_length": 8}, "fp32"
    run = run_family(tmp_path, name, t / f"{name}.safetensors", files, toys["tokenizers"], merge, extra, precision, a=toys["a"], check={"enabled": False})
    trainer = {"flux": "flux_train_network", "sd3": "sd3_train_network", "anima": "anima_train_network"}[name]
    assert_family_run(run, trainer, merged=merge == "checkpoint", checked=False)
    if name != "anima":  # Anima's LoRA loads in ComfyUI after sd-scripts' converter (the test above)
        lora = run / "diff-grayscale" / "grayscale.safetensors"
        assert not not_loaded(lora, t / f"{name}.safetensors")  # ComfyUI's key mapping
    if name == "flux":
        assert not diffusers_flux_modules_missing(run / "diff-grayscale" / "grayscale.safetensors")  # and diffusers' converter
    if name == "anima":
        assert "-m cml.sd_process.merge anima" in (run / "merge" / "log.txt").read_text().splitlines()[0]
