"""Every shipped preset loads and plans (its model and images replaced by test files)."""

import tomllib
from pathlib import Path

import pytest

from cml.kohya.write import render
from cml.preset import load_preset, shipped_presets
from tests.conftest import make_checkpoint, plan_for

PRESETS = sorted(shipped_presets().values())


def test_there_are_presets():
    assert {p.name for p in PRESETS} >= {"grayscale.toml", "demo.toml", "multi-target.toml", "sdxl-in-memory.toml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_plans(path, tmp_path, image_a):
    raw = tomllib.loads(path.read_text())
    family = raw.get("family", "sd1")
    model = make_checkpoint(tmp_path / "model.safetensors", family)
    sets = [f"base_model='{model}'", f"source='{image_a}'", f"output_dir='{tmp_path / 'runs'}'", "device='cpu'"]
    for name, t in raw["targets"].items():
        if "images" in t:
            sets.append(f"targets.{name}.images=['{image_a}']")
    preset, _ = load_preset(path, sets)
    plan = plan_for(path, sets)
    assert [s.name for s in plan.stages][0] == "copy"
    assert {s.target for s in plan.stages if s.name.startswith("diff-")} == set(preset.targets)
    files = render(plan, Path("/opt/sd-scripts"))
    assert all(f.exists() for f in files)


def test_grayscale_preset_is_the_articles_recipe(tmp_path, image_a):
    model = make_checkpoint(tmp_path / "m.safetensors")
    preset, _ = load_preset(PRESETS[[p.name for p in PRESETS].index("grayscale.toml")], [f"base_model='{model}'", f"source='{image_a}'"])
    s = preset.copy_settings()
    assert (s.dim, s.alpha, s.steps, s.learning_rate, s.optimizer, s.scheduler, s.warmup_steps, s.resolution, s.caption) == (
        16,
        16.0,
        500,
        1e-3,
        "AdamW8bit",
        "cosine",
        0,
        512,
        "",
    )
    assert preset.diff_settings("grayscale") == s and preset.merge == "checkpoint"
