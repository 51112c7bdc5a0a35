"""`cml demo` on the real sd-scripts, run once per session (tests/conftest.py, demo_run): the method itself, asserted
on its images and records. The fast tier's real training, merge and generation: `make test` runs these.
"""

import json
import re
import sys
import tomllib

import pytest
from PIL import Image

from cml.outputs import read_metadata
from cml.records import CheckMetrics, RunSummary, StageRecord, read
from tests.conftest import read_json

# What `make demo` measured on this project's 2-core CPU (the shipped demo preset on the demo model; README,
# Measured), and the floors these tests hold it to, a margin from the measurement.
COPY_SSIM_MIN = 0.8  # copy check, SSIM to A's VAE round trip with the copy LoRA, every seed (the goal)
BASE_SSIM_MAX = 0.45  # ... with the base model alone, which draws flat gray (SSIM's mean and contrast terms give
#                       a flat image ~0.38)
GRAY_AT_PLUS_1_MAX = 0.3  # mean saturation at weight +1, x that at 0, on the copy machine model
MORE_COLOUR_AT_MINUS_1_MIN = 1.2  # ... at weight -1
LUMA_SSIM_PLUS_1_MIN = 0.8  # luminance SSIM of weight +1 against weight 0
LUMA_SSIM_MINUS_1_MIN = 0.6  # ... of weight -1 (doubled colour clips, and clipping moves luminance)


def metrics(demo_run) -> CheckMetrics:
    m = read(CheckMetrics, demo_run["dir"] / "check" / "metrics.json")
    assert m is not None
    return m


def test_demo_copy_lora_gives_back_a_at_every_seed(demo_run):
    copy = metrics(demo_run).copy_check
    assert copy is not None and len(copy["seeds"]) >= 3
    for s in copy["seeds"]:
        assert s["ssim_copy_lora"] >= COPY_SSIM_MIN, f"seed {s['seed']}: copy LoRA SSIM {s['ssim_copy_lora']:.3f}"
        assert s["ssim_base"] <= BASE_SSIM_MAX, f"seed {s['seed']}: the base alone already draws A ({s['ssim_base']:.3f})"


def test_demo_grayscale_diff_lora_desaturates_the_copy_machine_and_keeps_its_content(demo_run):
    per_weight = metrics(demo_run).targets["grayscale"]["copy_machine"]
    sat = {w: v["mean_saturation"] for w, v in per_weight.items()}
    assert sat["1"] <= GRAY_AT_PLUS_1_MAX * sat["0"], sat
    assert sat["-1"] >= MORE_COLOUR_AT_MINUS_1_MIN * sat["0"], sat  # negative weight: the opposite direction
    assert per_weight["1"]["luminance_ssim_vs_0"] >= LUMA_SSIM_PLUS_1_MIN, per_weight
    assert per_weight["-1"]["luminance_ssim_vs_0"] >= LUMA_SSIM_MINUS_1_MIN, per_weight


def test_demo_diff_stage_trained_against_the_copy_machine_it_records(demo_run):
    """The diff LoRA was trained on the copy machine model made of this copy LoRA: the trainer's options name it,
    the diff record names its bytes, and sd-scripts' log shows it merged (in memory) or loaded (checkpoint)."""
    run = demo_run["dir"]
    summary = read(RunSummary, run / "run.json")
    copy, diff = read(StageRecord, run / "copy" / "record.json"), read(StageRecord, run / "diff-grayscale" / "record.json")
    assert summary is not None and copy is not None and diff is not None
    preset = tomllib.loads((run / "preset.toml").read_text())
    train = tomllib.loads((run / "diff-grayscale" / "train.toml").read_text())
    log = (run / "diff-grayscale" / "log.txt").read_text()
    if preset["merge"] == "in_memory":
        assert summary.stages_run == ["copy", "diff-grayscale"]
        assert train["pretrained_model_name_or_path"] == preset["base_model"]
        assert train["base_weights"] == [str(run / "copy" / "copy.safetensors")] and train["base_weights_multiplier"] == [1.0]
        assert diff.inputs == {"copy": copy.output_sha256}  # the bytes of the copy LoRA it was trained with
        assert f"all weights merged: {run / 'copy' / 'copy.safetensors'}" in log  # sd-scripts' own words
    else:
        merge = read(StageRecord, run / "merge" / "record.json")
        assert merge is not None and diff.inputs == {"merge": merge.output_sha256}
        assert train["pretrained_model_name_or_path"] == str(run / "merge" / "copy_machine.safetensors")
    meta = read_metadata(run / "diff-grayscale" / "grayscale.safetensors")
    assert meta["cml_trained_against"] == "copy machine model" and meta["cml_fingerprint"] == diff.fingerprint
    assert json.loads(meta["cml_images_sha256"])["B"] == ["transform:grayscale"]
    assert meta["ss_network_module"] == "networks.lora" and meta["cml_network_module"] == "cml.kohya.lora"


def test_demo_report_links_every_figure_and_grids_have_their_shape(demo_run):
    from cml.report.figures import HEADER_H, LABEL_W, cell_scale

    run = demo_run["dir"]
    assert f"report: {run / 'report.md'}" in demo_run["result"].stderr
    m = metrics(demo_run)
    c = m.settings
    rows, cols, size = len(c["prompts"]) * len(c["seeds"]), len(c["weights"]), 64
    k = cell_scale(size)
    assert list(m.targets["grayscale"]) == list(m.models) and m.grids
    for g in m.grids:
        assert Image.open(g).size == (LABEL_W + cols * size * k, HEADER_H + rows * size * k)
    for per_weight in m.targets["grayscale"].values():
        assert list(per_weight) == [f"{w:g}" for w in c["weights"]]
    report = (run / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) == 2 + len(m.grids) and all((run / link).is_file() for link in links)  # copy check, sweeps, losses
    assert "saturation vs weight 0" in report and "SSIM to A (VAE)" in report
    assert len(list((run / "check" / "gen").iterdir())) == len({m.models[label].split(" + ")[0] for label in m.models} | {"base"})


def test_demo_output_to_a_file_is_a_few_lines_per_stage(demo_run):
    """The demo's own output, captured as a log file would: cml's lines and a few progress lines per stage."""
    err = demo_run["result"].stderr
    for stage in ("copy", "diff-grayscale"):
        assert 2 <= sum(ln.startswith(f"cml: {stage}: step ") for ln in err.splitlines()) <= 12
    assert "avr_loss" not in err and len((demo_run["result"].stdout + err).encode()) < 12 * 1024


def test_diff_lora_loads_in_diffusers_every_key_used(demo_run, sd_scripts):
    lora_loads_in_diffusers(demo_run["dir"] / "diff-grayscale" / "grayscale.safetensors", sd_scripts)


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


def test_demo_run_again_trains_nothing_and_says_so(demo_run):
    from tests.conftest import run_cml

    again = run_cml("demo", "-o", str(demo_run["dir"].parent), "--quiet", "--set", "check.enabled=false", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("up to date, skipped") == len(read_json(demo_run["dir"] / "run.json")["outputs"])
    assert read_json(demo_run["dir"] / "run.json")["stages_run"] == []
