"""The direct method and a two-way slider on the demo model, end to end on the real sd-scripts (the full tier): the
demo's run folder, copied, given a direct target and the way back of its grayscale target. Its copy and diff stages
are kept (resume); the new stages run, then the check sweeps every difference LoRA on the copy machine model."""

import shutil

import pytest

from cml.records import CheckMetrics, RunSummary, read
from cml.safetensors_file import read_metadata
from tests.conftest import run_cml
from tests.sdscripts.test_real_run import lora_loads_in_diffusers

pytestmark = pytest.mark.full

# What the run measured on this project's 2-core CPU (README, Measured) and the floors held, a margin from it.
DIRECT_GRAY_AT_PLUS_1_MAX = 0.5  # the goal: saturation at +1, x that at 0, on the copy machine model
DIRECT_LUMA_SSIM_PLUS_1_MIN = 0.8  # ... and luminance SSIM against weight 0 at +1
SLIDER_LUMA_MINUS_1_MIN = 0.65  # the slider's luminance SSIM against weight 0 at -1 (measured 0.746)


@pytest.fixture(scope="module")
def methods_run(demo_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    shutil.copytree(demo_run["dir"], tmp / "demo")
    r = run_cml(
        "demo",
        "-o",
        str(tmp),
        "--set",
        'targets.gray_direct={transform="grayscale", method="direct"}',
        "--set",
        "targets.grayscale.symmetric=true",
        timeout=3600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp / "demo"
    m = read(CheckMetrics, run / "check" / "metrics.json")
    assert m is not None
    return {"dir": run, "metrics": m, "result": r}


def ratios(per_weight: dict) -> dict[str, float]:
    return {w: v["mean_saturation"] / per_weight["0"]["mean_saturation"] for w, v in per_weight.items()}


def test_only_the_new_stages_ran(methods_run):
    summary = read(RunSummary, methods_run["dir"] / "run.json")
    assert summary is not None
    assert summary.stages_skipped == ["copy", "diff-grayscale"]
    assert summary.stages_run == ["reverse-copy-grayscale", "reverse-diff-grayscale", "slider-grayscale", "direct-gray_direct"]


def test_a_direct_lora_moves_a_toward_b_and_keeps_the_content(methods_run):
    per_weight = methods_run["metrics"].targets["gray_direct"]["copy_machine"]
    sat = ratios(per_weight)
    assert sat["1"] <= DIRECT_GRAY_AT_PLUS_1_MAX, sat
    assert sat["-1"] >= 1.0, sat  # the other way: more colour
    assert per_weight["1"]["luminance_ssim_vs_0"] >= DIRECT_LUMA_SSIM_PLUS_1_MIN, per_weight
    meta = read_metadata(methods_run["dir"] / "direct-gray_direct" / "gray_direct.safetensors")
    assert meta["cml_method"] == "direct" and meta["cml_direct_multiplier"] == "0.25" and "lora_up x 0.25" in meta["cml_direct_scaled"]
    assert meta["cml_trained_against"] == "base model" and meta["ss_network_module"] == "networks.lora"


def test_the_two_way_slider_works_both_ways(methods_run):
    """Measured (README): at -1 the slider gives more colour than the one-way diff LoRA (1.41x vs 1.38x) and keeps a
    little less of the luminance (0.746 vs 0.782): on this model the luminance kept at -1 falls with the colour added,
    whichever LoRA adds it, so it does not beat the one-way LoRA there. The README's reason holds while it adds more."""
    slider = methods_run["metrics"].targets["grayscale_slider"]["copy_machine"]
    sat = ratios(slider)
    assert sat["1"] <= 0.3 and sat["-1"] >= 1.2, sat  # both ways
    assert sat["-1"] > ratios(methods_run["metrics"].targets["grayscale"]["copy_machine"])["-1"]
    assert slider["1"]["luminance_ssim_vs_0"] >= 0.8 and slider["-1"]["luminance_ssim_vs_0"] >= SLIDER_LUMA_MINUS_1_MIN, slider


def test_a_direct_lora_loads_in_diffusers(methods_run, sd_scripts):
    lora_loads_in_diffusers(methods_run["dir"] / "direct-gray_direct" / "gray_direct.safetensors", sd_scripts)
