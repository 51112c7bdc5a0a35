"""The fast tier's real run (tests/conftest.py, small_run): copy, merge with merge_lora.py, diff and the check with
gen_img.py on the real sd-scripts, a few steps each at 64 px, shared by the tests that read it. What cml did there
is checked against what sd-scripts and diffusers make of it, not against cml's own validation again."""

import hashlib
import re
import sys
import tomllib

import pytest

from cml.records import CheckMetrics, RunSummary, StageRecord, read
from cml.safetensors_file import file_and_content_sha256, read_metadata


def test_the_diff_lora_trained_against_the_copy_machine_model_it_records(small_run):
    run = small_run["dir"]
    summary = read(RunSummary, run / "run.json")
    assert summary is not None and summary.stages_run == ["copy", "merge", "diff-grayscale"]
    merge, diff = read(StageRecord, run / "merge" / "record.json"), read(StageRecord, run / "diff-grayscale" / "record.json")
    assert merge is not None and diff is not None
    merged = run / "merge" / "copy_machine.safetensors"
    assert merge.output_sha256 == hashlib.sha256(merged.read_bytes()).hexdigest()
    # what the diff was made from: the merged file's tensors (metadata aside: a copy machine model made again
    # differs only in its modelspec.date)
    assert diff.inputs == {"merge": merge.output_content} == {"merge": file_and_content_sha256(merged)[1]}
    train = tomllib.loads((run / "diff-grayscale" / "train.toml").read_text())
    assert train["pretrained_model_name_or_path"] == str(merged)
    assert f"--config_file {run / 'diff-grayscale' / 'train.toml'}" in (run / "diff-grayscale" / "log.txt").read_text().splitlines()[0]
    meta = read_metadata(run / "diff-grayscale" / "grayscale.safetensors")
    assert meta["cml_trained_against"] == "copy machine model" and meta["cml_fingerprint"] == diff.fingerprint
    assert meta["ss_network_module"] == "networks.lora" and meta["cml_network_module"] == "cml.sd_process.lora"
    assert meta["ss_max_train_steps"] == "3" and meta["ss_network_dim"] == "16"  # sd-scripts' own record of the run
    assert meta["cml_sd_scripts_commit"] == "48d368fa557731ad0488c07304dfeba8c07910eb"


def test_the_copy_machine_model_is_the_base_plus_the_copy_lora(small_run, sd_scripts, demo_assets):
    """The merged file differs from the base by exactly the copy LoRA (up @ down x alpha/dim), read back through
    sd-scripts' own key conversion, on a sample of modules across the U-Net's blocks."""
    import torch
    from safetensors.torch import load_file

    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    from library import model_util

    cfg = model_util.create_unet_diffusers_config(False)

    def unet(path):
        sd = {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}
        return model_util.convert_ldm_unet_checkpoint(False, sd, cfg)

    base, merged = unet(demo_assets["model"]), unet(small_run["dir"] / "merge" / "copy_machine.safetensors")
    lora = load_file(str(small_run["dir"] / "copy" / "copy.safetensors"))
    modules = sorted({k.split(".")[0] for k in lora})
    assert len(modules) == 192
    for name in modules[::24]:
        key = next(k for k in base if k.endswith(".weight") and "lora_unet_" + k.removesuffix(".weight").replace(".", "_") == name)
        up, down = lora[f"{name}.lora_up.weight"].float(), lora[f"{name}.lora_down.weight"].float()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base[key].shape) * float(lora[f"{name}.alpha"]) / down.shape[0]
        got = merged[key].float() - base[key].float()
        assert delta.abs().max() > 1e-5 and torch.allclose(got, delta, atol=2e-3, rtol=1e-2), f"{key}: merged - base is not the copy LoRA"


def test_the_check_generated_every_image_and_the_report_links_them(small_run):
    run = small_run["dir"]
    m = read(CheckMetrics, run / "check" / "metrics.json")
    assert m is not None and m.copy_check is not None
    assert list(m.targets["grayscale"]) == ["copy_machine", "base"] and m.models["copy_machine"] == str(run / "merge" / "copy_machine.safetensors")
    prompts = {d.name: (d / "prompts.txt").read_text().splitlines() for d in (run / "check" / "gen").iterdir()}
    # one gen_img run per model file: the base (copy check, the base's sweep), the copy machine model (its sweep)
    assert sorted(prompts) == ["1-base", "2-copy_machine"]
    assert len(list((run / "check" / "gen" / "1-base").glob("im_*.png"))) == len(prompts["1-base"]) == 3
    links = re.findall(r"\]\(([^)]+)\)", (run / "report.md").read_text())
    assert len(links) == 4 and all((run / link).is_file() for link in links)  # copy check, 2 sweeps, losses


def test_output_to_a_file_is_cmls_lines_and_a_few_progress_lines(small_run):
    out = small_run["result"].stdout + small_run["result"].stderr
    assert "avr_loss" not in out and "INFO" not in out  # the trainer's output is in log.txt only
    for stage in ("copy", "diff-grayscale"):
        assert 1 <= sum(ln.startswith(f"cml: {stage}: step ") for ln in out.splitlines()) <= 12
        assert "avr_loss" in (small_run["dir"] / stage / "log.txt").read_text()


def test_a_real_diff_lora_loads_in_diffusers_every_key_used(small_run, sd_scripts):
    lora_loads_in_diffusers(small_run["dir"] / "diff-grayscale" / "grayscale.safetensors", sd_scripts)


def lora_loads_in_diffusers(path, sd_scripts):
    """diffusers' own kohya-LoRA converter maps every key to a U-Net module; weight 1 changes the output, weight 0 not."""
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft: `pip install peft==0.14.0` (make test does)")
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from safetensors.torch import load_file

    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    from library import model_util

    lora = load_file(str(path))
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(dict(lora))  # raises on a key it cannot map
    assert converted and all(k.startswith("unet.") for k in converted)
    kohya_modules = {k.split(".", 1)[0] for k in lora}

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**model_util.create_unet_diffusers_config(False)).eval()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 768)
    with torch.no_grad():
        base = unet(x, t, ctx).sample
        unet.load_lora_adapter(converted, prefix="unet", network_alphas=alphas, adapter_name="diff")
        injected = [n for n, m in unet.named_modules() if "diff" in getattr(m, "lora_A", {})]
        assert len(injected) == len(kohya_modules), f"{len(kohya_modules)} kohya modules, {len(injected)} U-Net modules got one"
        unet.set_adapters(["diff"], weights=[0.0])
        zero = unet(x, t, ctx).sample
        unet.set_adapters(["diff"], weights=[1.0])
        one = unet(x, t, ctx).sample
    assert torch.allclose(zero, base, atol=1e-6)
    assert (one - base).abs().max() > 1e-4


def loader_facts(lora, sd_path):
    """What A1111 and Forge read of a LoRA: its sshs hashes as sd-scripts' own function computes them from the file as
    it is, and the keys they show."""
    import sys

    from safetensors.torch import load_file

    if str(sd_path) not in sys.path:
        sys.path.insert(0, str(sd_path))
    from library import train_util

    meta = read_metadata(lora)
    return meta, train_util.precalculate_safetensors_hashes(load_file(str(lora)), meta)


def test_every_kept_loras_metadata_is_true_of_the_file(small_run, sd_scripts):
    """sshs_model_hash / sshs_legacy_hash match the file as written (cml edits ss_* keys after sd-scripts hashed it);
    the resolution is the one trained at; the name tells runs apart."""
    for lora in (small_run["dir"] / "copy" / "copy.safetensors", small_run["dir"] / "diff-grayscale" / "grayscale.safetensors"):
        meta, (model_hash, legacy_hash) = loader_facts(lora, sd_scripts.path)
        assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == (model_hash, legacy_hash), lora
        assert meta["modelspec.resolution"] == "64x64" and meta["ss_output_name"] == f"small-{lora.stem}"
