"""Every shipped preset loads and plans (its model and images replaced by test files)."""

import json
import tomllib
from pathlib import Path

import pytest

from cml.preset import load_preset, shipped_presets
from cml.render.run_folder import render
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
    trained = {s.target for s in plan.stages if s.name.startswith(("diff-", "direct-"))}
    assert trained == set(preset.targets)
    render(plan, Path("/opt/sd-scripts"))
    for st in plan.stages:  # what was written says this stage's run: its images, its model, its output
        if st.kind == "train":
            ds = tomllib.loads((st.dir / "dataset.toml").read_text())
            images = Path(ds["datasets"][0]["subsets"][0]["image_dir"])
            assert sorted(x.name for x in images.iterdir()) == [f"{i:03d}.png" for i in range(len(st.images))]
            train = tomllib.loads((st.dir / "train.toml").read_text())
            assert (train["pretrained_model_name_or_path"], train["output_name"], train["max_train_steps"]) == (str(st.model), st.output.stem, st.train.steps)
            if st.role.value != "direct":  # the direct method runs cml's own trainer: no gui.json
                assert json.loads((st.dir / "gui.json").read_text())["output_name"] == st.output.stem
        else:
            assert json.loads((st.dir / "command.json").read_text())["argv"][1].endswith(".py")
    sh = (plan.run_dir / "commands.sh").read_text()
    assert all(f"# {st.name}: " in sh for st in plan.stages)
    assert tomllib.loads((plan.run_dir / "preset.toml").read_text())["name"] == preset.name


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


BENCH = sorted((Path(__file__).resolve().parents[2] / "bench" / "world").glob("*.toml"))


def test_there_are_world_bench_presets():
    assert {p.name for p in BENCH} >= {"article.toml", "drawn-a.toml", "lowlr.toml", "pairs.toml"}


@pytest.mark.parametrize("path", BENCH, ids=lambda p: p.name)
def test_world_bench_presets_load_and_plan_every_target(path, tmp_path, image_a):
    """bench/world (docs/measurements.md, the world demo's variants): each plans a trained LoRA per target."""
    raw = tomllib.loads(path.read_text())
    model = make_checkpoint(tmp_path / "model.safetensors")
    sources = [str(image_a)] * (len(raw["source"]) if isinstance(raw["source"], list) else 1)
    sets = [f"base_model='{model}'", f"source={sources}", f"output_dir='{tmp_path / 'runs'}'", "device='cpu'"]
    preset, _ = load_preset(path, sets)
    plan = plan_for(path, sets)
    trained = {s.target for s in plan.stages if s.name.startswith(("diff-", "direct-"))}
    assert trained == set(preset.targets) and preset.check.enabled and preset.check.prompts == ["moon", "tree", "boat"]
