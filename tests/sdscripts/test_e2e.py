"""End to end on the real sd-scripts: the SD1.5-architecture demo model at 64 px on the CPU.

Each run costs minutes, so runs are module fixtures shared by the tests that read them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from cml.outputs import read_metadata, validate_lora
from tests.conftest import ROOT, read_json, run_cml
from tests.conftest import sd_preset as preset


def run_ok(p: Path, *args: str) -> subprocess.CompletedProcess:
    r = run_cml("run", str(p), "--quiet", *args, timeout=1800)
    assert r.returncode == 0, f"cml run failed:\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def checkpoint_run(demo_assets, tmp_path_factory):
    """Checkpoint merge, two targets on one copy machine, 100 copy steps, baseline on."""
    tmp = tmp_path_factory.mktemp("ckpt")
    p = preset(
        tmp,
        demo_assets,
        baseline=True,
        baseline_steps=8,
        copy={"steps": 100},
        diff={"steps": 8},
        targets={"grayscale": {"transform": "grayscale"}, "invert": {"transform": "invert"}},
    )
    r = run_ok(p)
    return {"dir": tmp / "runs" / "e2e", "result": r, "preset": p}


@pytest.fixture(scope="module")
def in_memory_run(demo_assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mem")
    p = preset(tmp, demo_assets, merge="in_memory", resize_to=4)
    r = run_ok(p)
    return {"dir": tmp / "runs" / "e2e", "result": r, "preset": p}


def test_two_targets_share_one_copy_machine(checkpoint_run):
    run = read_json(checkpoint_run["dir"] / "run.json")
    assert run["stages_run"] == ["copy", "merge", "diff-grayscale", "baseline-grayscale", "diff-invert", "baseline-invert"]
    merged = checkpoint_run["dir"] / "merge" / "copy_machine.safetensors"
    rec = read_json(checkpoint_run["dir"] / "merge" / "record.json")
    assert merged.is_file() and rec["merge_check"]["unet_tensors_changed"] > 0
    for t in ("grayscale", "invert"):
        assert read_json(checkpoint_run["dir"] / f"diff-{t}" / "record.json")["fingerprint"]
        toml_text = (checkpoint_run["dir"] / f"diff-{t}" / "train.toml").read_text()
        assert str(merged) in toml_text  # trained against the copy machine model


@pytest.mark.parametrize("target", ["grayscale", "invert"])
def test_final_loras_pass_checks_and_carry_provenance(checkpoint_run, target):
    lora = checkpoint_run["dir"] / f"diff-{target}" / f"{target}.safetensors"
    summary = validate_lora(lora, 16, 16.0)
    assert summary.modules == 192 and all(k.startswith("lora_unet_") for k in summary.keys)  # U-Net only, SD1.5 attention
    meta = read_metadata(lora)
    assert meta["ss_network_dim"] == "16" and meta["ss_network_alpha"] in ("16.0", "16")
    assert meta["cml_target"] == target and meta["cml_merge_mode"] == "checkpoint"
    assert meta["cml_base_model_hash"].startswith("sha256:") and len(json.loads(meta["cml_images_sha256"])["A"][0]) == 64
    assert meta["cml_sd_scripts_commit"] == "48d368fa557731ad0488c07304dfeba8c07910eb"


def test_the_copy_machine_is_really_used(checkpoint_run):
    """Both targets' method check is measured, and the copy stage learned A. (That the copy machine model draws A
    and the diff LoRA learns A -> B is asserted on images: the test_demo_* tests.)"""
    check = read_json(checkpoint_run["dir"] / "run.json")["method_check"]
    for target in ("grayscale", "invert"):
        cm, base = check[target]["against_copy_machine"], check[target]["against_base"]
        assert cm is not None and base is not None and cm > 0 and base > 0
    copy_losses = read_json(checkpoint_run["dir"] / "copy" / "record.json")["losses"]
    assert sum(copy_losses[-10:]) / 10 < sum(copy_losses[:10]) / 10  # the copy stage learned A


def test_in_memory_mode_writes_no_merged_model_and_trains_the_same_modules(in_memory_run, checkpoint_run):
    d = in_memory_run["dir"]
    assert not (d / "merge").exists()
    lora = d / "diff-grayscale" / "grayscale.safetensors"
    validate_lora(lora, 16, 16.0)
    with safe_open(str(lora), "numpy") as f:
        mem_keys = set(f.keys())
    with safe_open(str(checkpoint_run["dir"] / "diff-grayscale" / "grayscale.safetensors"), "numpy") as f:
        ckpt_keys = set(f.keys())
    assert mem_keys == ckpt_keys and len(mem_keys) == 576
    meta = read_metadata(lora)
    assert meta["cml_merge_mode"] == "in_memory" and meta["ss_network_module"] == "networks.lora"


def test_resize_to_writes_a_smaller_rank_beside_the_full_one(in_memory_run):
    d = in_memory_run["dir"]
    small = d / "resize-grayscale" / "grayscale_r4.safetensors"
    s = validate_lora(small, 4, 4.0, resized=True)  # resize_lora.py keeps alpha/dim: 16/16 * 4
    assert s.modules == 192
    assert (d / "diff-grayscale" / "grayscale.safetensors").is_file()
    assert read_metadata(small)["cml_stage"] == "resize-grayscale"
    assert read_metadata(small)["cml_trained_against"] == "copy machine model"  # a resized diff LoRA is still a diff


def test_without_cmls_module_fix_plain_base_weights_trains_more_modules(in_memory_run, sd_scripts, tmp_path):
    """The defect cml works around: the same diff stage with plain networks.lora trains time_emb_proj too."""
    import toml
    import tomli_w as w

    cfg = toml.load(in_memory_run["dir"] / "diff-grayscale" / "train.toml")
    cfg.update(network_module="networks.lora", output_dir=str(tmp_path), logging_dir=str(tmp_path / "logs"), max_train_steps=1)
    (tmp_path / "train.toml").write_text(w.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(sd_scripts.path))
    r = subprocess.run(
        [sys.executable, "train_network.py", "--config_file", str(tmp_path / "train.toml")],
        cwd=sd_scripts.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with safe_open(str(tmp_path / "grayscale.safetensors"), "numpy") as f:
        keys = set(f.keys())
    assert len(keys) == 684 and any("time_emb_proj" in k for k in keys)


def test_resume_after_kill_during_the_diff_stage(demo_assets, tmp_path):
    p = preset(tmp_path, demo_assets, diff={"steps": 60})
    run = tmp_path / "runs" / "e2e"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cml", "run", str(p), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log = run / "diff-grayscale" / "log.txt"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not (log.exists() and "steps:" in log.read_text(errors="replace")):
        time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert not (run / "diff-grayscale" / "grayscale.safetensors").exists()
    copy_rec, merge_rec = read_json(run / "copy" / "record.json"), read_json(run / "merge" / "record.json")

    again = run_ok(p)
    assert "[1/3] copy: up to date, skipped" in again.stderr and "[2/3] merge: up to date, skipped" in again.stderr
    assert read_json(run / "copy" / "record.json") == copy_rec and read_json(run / "merge" / "record.json") == merge_rec
    assert read_json(run / "run.json")["stages_run"] == ["diff-grayscale"]
    validate_lora(run / "diff-grayscale" / "grayscale.safetensors", 16, 16.0)


# What `make demo` measured on this 2-core CPU (presets/demo.toml on the demo model of cml/demo/model.py;
# README, Measured), and the floors these tests hold it to, a margin from the measurement.
COPY_SSIM_MIN = 0.85  # copy check, SSIM to A's VAE round trip with the copy LoRA, every seed (measured 0.938-0.981)
BASE_SSIM_MAX = 0.45  # ... with the base model alone, which draws flat gray (measured 0.379-0.382: SSIM's mean
#                       and contrast terms give a flat image that much; the goal was <= 0.3)
GRAY_AT_PLUS_1_MAX = 0.3  # mean saturation at weight +1, x that at 0, on the copy machine model (measured 0.09)
MORE_COLOUR_AT_MINUS_1_MIN = 1.2  # ... at weight -1 (measured 1.55)
LUMA_SSIM_PLUS_1_MIN = 0.8  # luminance SSIM of weight +1 against weight 0 (measured 0.883)
LUMA_SSIM_MINUS_1_MIN = 0.55  # ... of weight -1 (measured 0.672: doubled colour clips, and clipping moves luminance)


@pytest.fixture(scope="module")
def demo_run(sd_scripts, demo_assets, tmp_path_factory):
    """`cml demo`, what `make demo` runs: every stage, then the check."""
    tmp = tmp_path_factory.mktemp("demo")
    r = run_cml("demo", "-o", str(tmp), "--quiet", timeout=2400)
    assert r.returncode == 0, r.stderr[-4000:]
    return {"dir": tmp / "demo", "result": r}


def test_demo_copy_lora_gives_back_a_at_every_seed(demo_run):
    copy = read_json(demo_run["dir"] / "check" / "metrics.json")["copy_check"]
    assert len(copy["seeds"]) >= 3
    for s in copy["seeds"]:
        assert s["ssim_copy_lora"] >= COPY_SSIM_MIN, f"seed {s['seed']}: copy LoRA SSIM {s['ssim_copy_lora']:.3f}"
        assert s["ssim_base"] <= BASE_SSIM_MAX, f"seed {s['seed']}: the base alone already draws A ({s['ssim_base']:.3f})"


def test_demo_grayscale_diff_lora_desaturates_the_copy_machine_and_keeps_its_content(demo_run):
    per_weight = read_json(demo_run["dir"] / "check" / "metrics.json")["targets"]["grayscale"]["copy_machine"]
    sat = {w: v["mean_saturation"] for w, v in per_weight.items()}
    assert sat["1"] <= GRAY_AT_PLUS_1_MAX * sat["0"], sat
    assert sat["-1"] >= MORE_COLOUR_AT_MINUS_1_MIN * sat["0"], sat  # negative weight: the opposite direction
    assert per_weight["1"]["luminance_ssim_vs_0"] >= LUMA_SSIM_PLUS_1_MIN, per_weight
    assert per_weight["-1"]["luminance_ssim_vs_0"] >= LUMA_SSIM_MINUS_1_MIN, per_weight


def test_demo_method_check_is_measured_and_reported(demo_run):
    """The early-loss comparison is measured and in the report. On this model it is no head start (measured
    0.30 vs 0.27): the base already predicts eps = x_t, and at small t the copy machine's pull to A costs it on B."""
    m = read_json(demo_run["dir"] / "run.json")["method_check"]["grayscale"]
    assert 0 < m["against_copy_machine"] < 1 and 0 < m["against_base"] < 1, m
    assert f"| grayscale | {m['against_copy_machine']:.4f} | {m['against_base']:.4f} |" in (demo_run["dir"] / "report.md").read_text()


def test_demo_report_grids_and_the_same_images_again(demo_run):
    """The report links every figure; grids have their shape; a second check gives the same images (fixed seeds)."""
    from PIL import Image

    from cml.report.figures import HEADER_H, LABEL_W, cell_scale

    run = demo_run["dir"]
    assert f"grid: {run / 'check'}" in demo_run["result"].stderr and f"report: {run / 'report.md'}" in demo_run["result"].stderr
    metrics = read_json(run / "check" / "metrics.json")
    c = metrics["settings"]
    rows, cols, size = len(c["prompts"]) * len(c["seeds"]), len(c["weights"]), 64
    k = cell_scale(size)
    assert len(metrics["grids"]) == 2  # the copy machine model and the plain demo model
    for g in metrics["grids"]:
        assert Image.open(g).size == (LABEL_W + cols * size * k, HEADER_H + rows * size * k)
    per_model = metrics["targets"]["grayscale"]
    assert list(per_model) == ["copy_machine", "demo-sd15-v2"]
    for per_weight in per_model.values():
        assert list(per_weight) == [f"{w:g}" for w in c["weights"]]
        assert all({"mean_saturation", "luminance_ssim_vs_0"} == set(v) for v in per_weight.values())
    report = (run / "report.md").read_text()
    import re

    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) == 4 and all((run / link).is_file() for link in links)  # copy check, 2 sweeps, losses
    assert "saturation vs weight 0" in report and "SSIM to A (VAE)" in report
    first = [Image.open(f).tobytes() for f in sorted((run / "check" / "gen" / "copy").glob("im_*.png"))]
    again = run_cml("check", str(run), "--quiet", timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    second = [Image.open(f).tobytes() for f in sorted((run / "check" / "gen" / "copy").glob("im_*.png"))]
    assert first == second  # fixed seeds: the same images


def test_diff_lora_loads_in_diffusers_every_key_used(checkpoint_run, sd_scripts):
    """diffusers' own kohya-LoRA converter maps every key to a U-Net module; weight 1 changes the output, weight 0 not."""
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft: `pip install peft==0.14.0` (make test does)")
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from safetensors.torch import load_file

    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    from library import model_util

    lora = load_file(str(checkpoint_run["dir"] / "diff-grayscale" / "grayscale.safetensors"))
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
