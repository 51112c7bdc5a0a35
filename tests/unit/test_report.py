"""cml/report/ in-process."""

import numpy as np
import pytest
from PIL import Image

from cml.report.figures import HEADER_H, LABEL_W, cell_scale, grid
from cml.report.generate import EMPTY_PROMPT, Job, prompt_line
from cml.report.metrics import luminance_ssim, mean_pixel_change, mean_saturation, rgb_ssim
from tests.conftest import colourful


def photo_like() -> Image.Image:
    """A colourful image with texture (not a flat gradient), as a real photo would be."""
    rng = np.random.default_rng(0)
    base = np.asarray(colourful((128, 128)), dtype=np.float32)
    noise = rng.normal(0, 18, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def test_grayscale_effect_measure_orders_colour_partial_and_gray():
    a = photo_like()
    gray = a.convert("L").convert("RGB")
    half = Image.blend(a, gray, 0.5)
    assert mean_saturation(a) > mean_saturation(half) > mean_saturation(gray)
    assert mean_saturation(gray) < 0.01
    # Content stays: luminance SSIM of the grayscale against A is high, against an unrelated image low.
    other = Image.fromarray(np.roll(np.asarray(a), 40, axis=1))
    assert luminance_ssim(gray, a) > 0.95 > 0.5 > luminance_ssim(other, a)
    assert rgb_ssim(a, a) > 0.999 and rgb_ssim(gray, a) < rgb_ssim(a, a)
    assert mean_pixel_change(a, a) == 0 < mean_pixel_change(gray, a)


def test_empty_prompt_is_written_so_gen_img_keeps_the_options():
    line = prompt_line(Job("", 3, (-0.5,)))
    assert line == f"{EMPTY_PROMPT} --d 3 --am -0.5"
    # gen_img.py: strip, then split on " --": the prompt part must not swallow an option.
    assert line.strip().split(" --")[0] == EMPTY_PROMPT
    assert prompt_line(Job("a red car", 1, (1.0, 0.0))) == "a red car --d 1 --am 1.0,0.0"


def test_generator_argv_carries_the_check_settings(write_preset, tmp_path):
    """Sampler, guidance scale and batch size reach gen_img.py; LoRAs applied together each get a module and a weight."""
    from cml.report.generate import gen_argv
    from tests.conftest import plan_for

    plan = plan_for(write_preset(check={"sampler": "euler_a", "guidance_scale": 1.0, "batch_size": 3, "sampling_steps": 7}))
    a, b = tmp_path / "copy.safetensors", tmp_path / "diff.safetensors"
    argv = gen_argv(plan, plan.preset.base_model, [a, b], tmp_path / "p.txt", tmp_path / "out")
    opt = lambda name, n=1: argv[argv.index(name) + 1 : argv.index(name) + 1 + n]  # noqa: E731
    assert opt("--sampler") == ["euler_a"] and opt("--scale") == ["1.0"] and opt("--batch_size") == ["3"] and opt("--steps") == ["7"]
    assert opt("--network_module", 2) == ["networks.lora", "networks.lora"]
    assert opt("--network_weights", 2) == [str(a), str(b)] and opt("--network_mul", 2) == ["1.0", "1.0"]
    default = gen_argv(plan_for(write_preset()), plan.preset.base_model, [a], tmp_path / "p.txt", tmp_path / "out")
    assert default[default.index("--sampler") + 1] == "ddim" and default[default.index("--scale") + 1] == "7.5"


def test_grid_size_is_rows_by_columns_by_image_size():
    cells = [[Image.new("RGB", (64, 64), (i * 40, j * 40, 0)) for j in range(5)] for i in range(4)]
    g = grid(cells, [f"r{i}" for i in range(4)], [f"c{j}" for j in range(5)])
    k = cell_scale(64)
    assert k == 2 and g.size == (LABEL_W + 5 * 64 * k, HEADER_H + 4 * 64 * k)
    big = grid([[Image.new("RGB", (512, 512))]], ["r"], ["c"])
    assert big.size == (LABEL_W + 512, HEADER_H + 512)


def test_sd2_loras_reach_gen_img_with_linear_projections(tmp_path):
    """sd-scripts trains SD2 with 1x1-conv projections; gen_img.py builds SD2 with linear ones and refused the run's
    LoRAs (size mismatch): the check hands it copies with [out, in] shapes. Other families get the run's own files."""
    from types import SimpleNamespace

    from safetensors import safe_open
    from safetensors.numpy import save_file

    from cml.report.generate import loras_for_generator

    lora = tmp_path / "diff.safetensors"
    proj = "lora_unet_down_blocks_0_attentions_0_proj_out.lora_up.weight"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"  # a real 1x1 conv elsewhere is not touched
    save_file({proj: np.ones((320, 16, 1, 1), np.float16), conv: np.ones((320, 16, 1, 1), np.float16)}, str(lora))
    plan = lambda family: SimpleNamespace(inputs=SimpleNamespace(family=family))  # noqa: E731
    for family in ("sd1", "sdxl"):
        assert loras_for_generator(plan(family), [lora], tmp_path / family) == [lora]
    (copy,) = loras_for_generator(plan("sd2"), [lora], tmp_path / "sd2")
    assert copy.parent == tmp_path / "sd2" / "loras" and copy != lora
    with safe_open(str(copy), "np") as f:
        assert f.get_slice(proj).get_shape() == [320, 16] and f.get_slice(conv).get_shape() == [320, 16, 1, 1]
    with safe_open(str(lora), "np") as f:
        assert f.get_slice(proj).get_shape() == [320, 16, 1, 1]  # the run's file as sd-scripts wrote it


def test_weights_are_written_as_gen_img_reads_them():
    """gen_img.py reads --am with "am ([\\d\\.\\-,]+)": a weight written with an exponent (1e-05) would be read as 1."""
    import re

    from cml.report.generate import Job, prompt_line

    line = prompt_line(Job("", 1, (1.0, 1e-05, -0.000001, 0.0)))
    parsed = [float(x) for x in re.search(r"am ([\d\.\-,]+)", line).group(1).split(",")]
    assert parsed == [1.0, 1e-05, -0.000001, 0.0]


def test_weights_gen_img_cannot_read_are_refused(write_preset):
    from cml.errors import ConfigErrors
    from cml.preset.load import load_preset

    with pytest.raises(ConfigErrors, match="more than 6 decimals"):
        load_preset(write_preset(check={"weights": [0.0, 1e-07]}))


def test_the_side_by_side_table_has_every_swept_weight_and_its_ratios():
    from cml.records import CheckMetrics
    from cml.report.markdown import side_by_side

    def at(sat, ssim0, to_a):
        return {"mean_saturation": sat, "luminance_ssim_vs_0": ssim0, "ssim_to_a": to_a}

    weights = {"0": at(0.4, 1.0, 0.3), "1": at(0.1, 0.8, 0.35), "0.5": at(0.2, 0.9, 0.31), "-1": at(0.8, 0.7, 0.2)}
    r = CheckMetrics(settings={}, copy_check=None, targets={"grayscale": {"base": weights}}, grids=[])
    rows = [line for line in side_by_side(r) if line.startswith("| grayscale")]
    assert rows == [
        "| grayscale | base | 1 | 0.25x | 0.800 | 0.350 (0.300) |",
        "| grayscale | base | 0.5 | 0.50x | 0.900 | 0.310 (0.300) |",
        "| grayscale | base | -1 | 2.00x | 0.700 | 0.200 (0.300) |",
    ]


def test_leakage_with_several_as_is_measured_against_each_a(write_preset, tmp_path):
    """A LoRA that draws the second A instead of the prompt's content leaks, though its image is nothing like the
    first A: leakage is the SSIM to the nearest A, and the SSIM to each A is kept beside it."""
    from cml.report.check import SweepModel, muls, sweep, swept_loras
    from tests.conftest import plan_for

    rng = np.random.default_rng(0)
    a2 = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")  # nothing like colourful()
    scene = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    a2.save(tmp_path / "a2.png")
    p = write_preset(source=[str(tmp_path / "a.png"), str(tmp_path / "a2.png")], check={"weights": [0.0, 1.0], "seeds": [1], "prompts": ["moon"]})
    plan = plan_for(p)
    (plan.run_dir / "check").mkdir(parents=True)
    key, lora = next(iter(swept_loras(plan).items()))
    loras = [lora.output]
    images = {Job("moon", 1, muls(loras, {lora.output: 0.0})): scene, Job("moon", 1, muls(loras, {lora.output: 1.0})): a2}
    a1 = plan.inputs.source[0].image.convert("RGB").resize((64, 64))
    _, per_weight, each_a = sweep(plan, key, lora, SweepModel("base", plan.preset.base_model), images, loras, [a1, a2])
    assert per_weight["1"]["ssim_to_a"] == pytest.approx(1.0)  # it drew A 2
    assert per_weight["0"]["ssim_to_a"] < 0.1
    to_first, to_second = each_a["1"]
    assert to_first < 0.1 and to_second == pytest.approx(1.0)
