"""Presets through the CLI: show-config, --set, bad presets as one line with exit 2."""

import tomllib

import pytest

from cml.preset.load import load_preset
from tests.conftest import run_cml


def test_show_config_output_is_itself_a_valid_preset(write_preset, tmp_path):
    p = write_preset(copy={"steps": 5})
    r = run_cml("show-config", str(p))
    assert r.returncode == 0, r.stderr
    data = tomllib.loads(r.stdout)
    assert data["train"]["dim"] == 16 and data["copy"] == {"steps": 5}
    again = tmp_path / "again.toml"
    again.write_text(r.stdout)
    a, _ = load_preset(p)
    b, _ = load_preset(again)
    assert a.model_dump() == b.model_dump()


def test_bad_preset_is_one_clear_error_exit_2_no_traceback(write_preset):
    r = run_cml("plan", str(write_preset(train={"stepz": 3})))
    assert r.returncode == 2
    assert "train.stepz: unknown key; did you mean 'train.steps'?" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": {"steps": True}}, "train.steps: must be a number, not true/false"),
        ({"train": {"learning_rate": float("inf")}}, "train.learning_rate: Input should be a finite number"),
        ({"train": {"alpha": float("nan")}}, "train.alpha: Input should be a finite number"),
        ({"check": {"weights": [-1.0, float("inf"), 0.0]}}, "check.weights.1: Input should be a finite number"),
        ({"check": {"weights": [-1.0, 1.0]}}, "lacks 0: the metrics compare every weight with weight 0"),
        ({"resize_to": 32}, "resize_to (32) is above targets.grayscale's dim (16)"),
        ({"train": {"optimizer": "AdamW8bt"}}, "'AdamW8bt' is not an optimizer sd-scripts knows; did you mean 'AdamW8bit'?"),
        ({"check": {"sampler": "euler_ancestral"}}, "check.sampler: Input should be 'ddim', 'pndm'"),
        ({"check": {"batch_size": 0}}, "check.batch_size: Input should be greater than 0"),
    ],
)
def test_refused_before_anything_is_written(write_preset, tmp_path, change, message):
    import tomli_w

    p = write_preset()
    data = tomllib.loads(p.read_text())
    for k, v in change.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    p.write_text(tomli_w.dumps(data))  # tomli-w writes inf and nan as TOML's own inf and nan
    r = run_cml("plan", str(p))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_command_line_paths_resolve_where_they_were_typed(tmp_path, monkeypatch):
    """The README's "Real use" command, from another folder: --set paths are relative to the current directory."""
    from cml.preset import shipped_presets
    from tests.conftest import colourful, make_checkpoint, tokenizer_dir

    work = tmp_path / "elsewhere"
    work.mkdir()
    make_checkpoint(work / "model.safetensors")
    colourful().save(work / "a.png")
    monkeypatch.chdir(work)
    preset, _ = load_preset(shipped_presets()["grayscale"], ['base_model="model.safetensors"', 'source="a.png"'])
    assert preset.base_model == work / "model.safetensors" and preset.source == [work / "a.png"]
    assert preset.output_dir == work / "runs"  # runs/ where cml runs, as the README says
    tok = f"tokenizer_cache_dir='{tokenizer_dir()}'"
    r = run_cml(
        "plan",
        "grayscale",  # a shipped preset, by name
        "--set",
        'base_model="model.safetensors"',
        "--set",
        'source="a.png"',
        "--set",
        'device="cpu"',
        "--set",
        tok,
        cwd=work,
    )
    assert r.returncode == 0, r.stderr
    assert (work / "runs" / "grayscale" / "copy" / "train.toml").is_file()


def test_show_config_saved_anywhere_means_the_same_run(write_preset, tmp_path):
    p = write_preset(output_dir="out")  # relative, inside the preset
    shown = run_cml("show-config", str(p))
    assert shown.returncode == 0, shown.stderr
    moved = tmp_path / "a" / "b" / "moved.toml"
    moved.parent.mkdir(parents=True)
    moved.write_text(shown.stdout)
    a, _ = load_preset(p)
    b, _ = load_preset(moved)
    assert a.model_dump() == b.model_dump()


def test_check_models_must_exist_and_be_checkpoints(write_preset, tmp_path):
    from tests.conftest import make_checkpoint

    r = run_cml("plan", str(write_preset(check={"models": [str(tmp_path / "nope.safetensors")]})))
    assert r.returncode == 2 and "check.models[0]" in r.stderr and "model not found" in r.stderr
    xl = make_checkpoint(tmp_path / "xl.safetensors", "sdxl")
    r = run_cml("plan", str(write_preset(check={"models": [str(xl)]})))
    assert r.returncode == 2 and "the check model is SDXL but the LoRAs are trained on SD1.x" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_offline_without_a_cached_tokenizer_is_one_line_before_anything_runs(write_preset, tmp_path, fake_sd):
    p = write_preset(tokenizer_cache_dir=str(tmp_path / "empty-cache"))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = run_cml("plan", str(p), "--sd-scripts", fake_sd, env=env)
    assert r.returncode == 2 and "sd-scripts needs the tokenizer openai/clip-vit-large-patch14" in r.stderr
    assert "run once with network" in r.stderr and not (tmp_path / "runs").exists()
    d = run_cml("doctor", "--sd-scripts", fake_sd, env={**env, "CML_CACHE_DIR": str(tmp_path / "cache")})
    assert d.returncode == 1 and "!! tokenizer" in d.stdout


def test_demo_with_a_preset_that_is_not_there_is_one_line_and_writes_nothing(tmp_path):
    r = run_cml("demo", "--world", "--preset", str(tmp_path / "nosuch.toml"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count("cml: error:") == 1 and "nosuch.toml: no such preset file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
