"""tests/kohya_gui.py against the kohya_ss GUI's own builder functions (bmaltais/kohya_ss 45088f04).

Needs a checkout of the GUI: CML_KOHYA_SS=/path/to/kohya_ss (its kohya_gui/ package; gradio and easygui are
stubbed, the functions used do not touch them). Skipped, with that reason, where it is not set.
"""

import os
import sys
import types
from pathlib import Path

import pytest

from cml.render.gui import GUI_SAFE_ARG, gui_json, gui_problems
from tests.conftest import plan_for
from tests.kohya_gui import gui_to_options, v_parameterization, warmup_steps


@pytest.fixture(scope="module")
def gui_builder(tmp_path_factory):
    root = os.environ.get("CML_KOHYA_SS")
    if not root or not (Path(root) / "kohya_gui" / "common_gui.py").is_file():
        pytest.skip("set CML_KOHYA_SS to a bmaltais/kohya_ss checkout (commit 45088f04) to test against the GUI's own builder")
    saved = dict(sys.modules)
    for name in ("gradio", "easygui"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["easygui"].msgbox = sys.modules["easygui"].ynbox = lambda *a, **k: None
    sys.path.insert(0, root)
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("kohya_gui"))  # its logging setup writes setup.log into the current folder
    try:
        import kohya_gui.common_gui as cg
    except Exception as e:  # another GUI version, missing dependencies
        pytest.skip(f"kohya_gui.common_gui does not import from {root}: {type(e).__name__}: {e}")
    finally:
        sys.path.remove(root)
        os.chdir(here)
    yield cg
    for k in set(sys.modules) - set(saved):
        if k.startswith(("kohya_gui", "gradio", "easygui")):
            del sys.modules[k]


@pytest.mark.parametrize(
    "extra",
    [
        "--base_weights /runs/t/copy/copy.safetensors",
        "--base_weights C:/Users/me/runs/t/copy/copy.safetensors --seed 0",
        "--base_weights /my runs/t/copy.safetensors",
        '--base_weights "C:\\Users\\me\\copy.safetensors"',
    ],
)
def test_additional_parameters_as_the_gui_passes_them(gui_builder, extra):
    ours = gui_to_options({"additional_parameters": extra})[1]
    assert gui_builder.run_cmd_advanced_training(run_cmd=[], additional_parameters=extra) == ours


def test_cml_additional_parameters_arrive_intact(gui_builder, write_preset):
    plan = plan_for(write_preset(merge="in_memory", train={"resolution": 64, "steps": 3, "seed": 0}))
    g = gui_json(plan, plan.stage("diff-grayscale"))
    argv = gui_builder.run_cmd_advanced_training(run_cmd=[], additional_parameters=g["additional_parameters"])
    assert argv == ["--base_weights", plan.stage("copy").output.as_posix(), "--seed", "0"]


def gui_warmup(cg, gui: dict) -> int:
    """lr_warmup_steps as the GUI runs a loaded gui.json: Load config (update_my_data), then train_model's rule."""
    data = cg.update_my_data(dict(gui))
    pct, override = data.get("lr_warmup", 0), data.get("lr_warmup_steps", 0)
    if not (float(override or 0) > 0) and pct:  # train_model: a percent becomes steps when max_train_steps is known
        return round(float(pct) * int(data["max_train_steps"]) / 100)
    resolved = cg.resolve_lr_warmup_steps(pct, override)
    return resolved if isinstance(resolved, int) else round(resolved * int(data["max_train_steps"]))


@pytest.mark.parametrize("gui", [{"lr_warmup": 0.6}, {"lr_warmup": 1.4}, {"lr_warmup": 10}, {"lr_warmup": 0}])
def test_a_warmup_percent_is_read_as_a_whole_percent(gui_builder, gui):
    """What a percent gives in the real GUI, and in tests/kohya_gui.py's table (0.6 % of 500 steps: 0, not 3)."""
    gui = {**gui, "max_train_steps": 500}
    assert warmup_steps(gui["lr_warmup"], gui) == gui_warmup(gui_builder, gui)


@pytest.mark.parametrize("warmup, steps", [(3, 500), (7, 500), (0, 500), (1, 40)])
def test_cmls_warmup_arrives_as_exactly_its_steps(gui_builder, write_preset, warmup, steps):
    plan = plan_for(write_preset(train={"resolution": 64, "steps": steps, "warmup_steps": warmup}))
    g = gui_json(plan, plan.stage("copy"))
    assert gui_warmup(gui_builder, g) == warmup == warmup_steps(g["lr_warmup"], g)


def family_change_event(root: str):
    """The GUI's own toggle_checkboxes (class_source_model.py), taken out of the class that defines it, run with a
    stand-in for gradio's Checkbox that hands back what the event sets."""
    import ast
    import textwrap

    src = (Path(root) / "kohya_gui" / "class_source_model.py").read_text(encoding="utf-8")
    fn = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == "toggle_checkboxes")
    code = textwrap.dedent(ast.get_source_segment(src, fn) or "")
    gr = types.SimpleNamespace(Checkbox=lambda **kw: kw)
    scope: dict = {"gr": gr}
    exec(code, scope)
    return scope["toggle_checkboxes"]


@pytest.mark.parametrize("v2, sdxl", [(False, False), (True, False), (False, True)])
@pytest.mark.usefixtures("gui_builder")  # skips without CML_KOHYA_SS
def test_the_family_change_event_and_v_prediction(v2, sdxl):
    event = family_change_event(os.environ["CML_KOHYA_SS"])
    v_box = event(v2, True, sdxl, False, False, False, False, False)[1]
    kept = v_box.get("value", True) is not False  # the event leaves the box alone unless it sets value=False
    assert kept == v_parameterization(True, {"v2": v2, "sdxl": sdxl})


def test_an_sd1_v_prediction_model_keeps_v_parameterization_through_the_gui(gui_builder, write_preset, tmp_path):
    from tests.conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "vpred.safetensors", metadata={"modelspec.prediction_type": "v"})
    plan = plan_for(write_preset(base_model=str(ckpt)))
    g = gui_json(plan, plan.stage("copy"))
    argv = gui_builder.run_cmd_advanced_training(run_cmd=[], additional_parameters=g["additional_parameters"])
    assert "--v_parameterization" in argv
    cfg, extra = gui_to_options(g)
    assert extra == argv and "v_parameterization" not in cfg  # the box is lost; the option on the command line holds


@pytest.mark.parametrize("name", ["ランダム", "café", "naïve run"])
def test_a_path_the_gui_would_quote_is_warned_about(gui_builder, write_preset, tmp_path, name):
    """shlex.quote, as the GUI runs it on each piece, quotes any non-ASCII letter: cml must warn, not stay silent."""
    plan = plan_for(write_preset(merge="in_memory", output_dir=str(tmp_path / name)))
    g = gui_json(plan, plan.stage("diff-grayscale"))
    argv = gui_builder.run_cmd_advanced_training(run_cmd=[], additional_parameters=g["additional_parameters"])
    assert argv != g["additional_parameters"].split()  # the GUI does not pass it as written
    assert not all(GUI_SAFE_ARG.fullmatch(a) for a in g["additional_parameters"].split())
    assert any("would not arrive intact" in p for p in gui_problems(plan))


def test_the_guis_accelerate_field_defaults_to_no_compile(gui_builder):
    """lora_gui.py writes accelerate's dynamo_backend into the trainer's TOML; its default is "no", with which
    sd-scripts' --torch_compile compiles nothing: gui.json must say inductor itself."""
    src = (Path(os.environ["CML_KOHYA_SS"]) / "kohya_gui" / "class_accelerate_launch.py").read_text(encoding="utf-8")
    assert 'self.config.get("accelerate_launch.dynamo_backend", "no")' in src
    lora = (Path(os.environ["CML_KOHYA_SS"]) / "kohya_gui" / "lora_gui.py").read_text(encoding="utf-8")
    assert '"dynamo_backend": dynamo_backend,' in lora


def test_gui_json_compiles_where_train_toml_does(write_preset):
    from tests.kohya_gui import gui_to_options

    plan = plan_for(write_preset(train={"resolution": 64, "steps": 3, "torch_compile": True}))
    cfg, extra = gui_to_options(gui_json(plan, plan.stage("copy")))
    assert cfg["dynamo_backend"] == "inductor" and "--torch_compile" in extra


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_the_guis_model_detection_unticks_a_family_for_a_file_not_there_yet(gui_builder, family, tmp_path):
    """The GUI's own SDModelType: a copy machine model before its merge ran is no family; after, it is."""
    from kohya_gui.sd_modeltype import SDModelType

    from tests.conftest import make_checkpoint
    from tests.kohya_gui import loaded_boxes

    merged = tmp_path / "merge" / "copy_machine.safetensors"
    detect = SDModelType(str(merged))
    assert not detect.Is_SD2() and not detect.Is_SDXL()
    merged.parent.mkdir()
    make_checkpoint(merged, family)
    detect = SDModelType(str(merged))
    assert (detect.Is_SD2(), detect.Is_SDXL()) == (family == "sd2", family == "sdxl")
    assert loaded_boxes({"v_parameterization": True}, False, family) == {"v2": False, "sdxl": False, "v_parameterization": False}


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_every_stage_trained_on_a_merged_model_says_when_to_load_it(write_preset, tmp_path, family):
    """The diff stage, and a symmetric target's way back, train on copy machine models the run makes."""
    from cml.render.gui import gui_load_order
    from tests.conftest import make_checkpoint

    model = make_checkpoint(tmp_path / f"{family}.safetensors", family)
    vpred = {"v_parameterization": True} if family == "sd2" else {}
    plan = plan_for(write_preset(base_model=str(model), targets={"g": {"transform": "grayscale", "symmetric": True}}, **vpred))
    notes = gui_load_order(plan)
    assert [n.split("/")[0] for n in notes] == ["diff-g", "reverse-diff-g"]
    assert all(("v2 (and so v-parameterization)" if family == "sd2" else "SDXL") in n for n in notes)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_the_guis_model_detection_ticks_flux_and_sd3_as_cml_expects(gui_builder, family, tmp_path):
    """The GUI's own SDModelType on the family's file, and on one without the key it reads (made up: real files
    have it): cml's gui_detected says the same."""
    from kohya_gui.sd_modeltype import SDModelType

    from cml.model_files import inspect_model
    from tests.conftest import FAMILY_KEYS, dit_model, small_file

    base, files = dit_model(tmp_path, family)
    detect = SDModelType(str(base))
    assert (detect.Is_FLUX1(), detect.Is_SD3()) == (family == "flux", family == "sd3")
    assert inspect_model(base).gui_detected
    bare = {k: v for k, v in FAMILY_KEYS[family].items() if "key_norm" not in k and "x_embedder" not in k}
    other = small_file(tmp_path / f"other-{family}.safetensors", bare)
    detect = SDModelType(str(other))
    assert not detect.Is_FLUX1() and not detect.Is_SD3()
    assert not inspect_model(other).gui_detected


def test_the_flux_and_sd3_fields_are_the_ones_lora_gui_reads(gui_builder):
    """The lines of lora_gui.py and the panels' defaults that tests/kohya_gui.py and cml/render/gui.py model."""
    root = Path(os.environ["CML_KOHYA_SS"]) / "kohya_gui"
    lora = (root / "lora_gui.py").read_text(encoding="utf-8")
    for line in (
        'network_module = "networks.lora_flux"',
        'network_module = "networks.lora_sd3" if sd3_checkbox else "networks.lora"',
        "clip_l_value = sd3_clip_l",
        "t5xxl_value = sd3_t5xxl",
        '"clip_g": clip_g if sd3_checkbox else None,',
        '"weighting_scheme": weighting_scheme if sd3_checkbox else None,',
        '"guidance_scale": float(guidance_scale) if flux1_checkbox else None,',
        '"apply_t5_attn_mask": apply_t5_attn_mask if flux1_checkbox else None,',
        "int(t5xxl_max_token_length) if flux1_checkbox else None",
        "or (flux1_checkbox and flux1_cache_text_encoder_outputs)",
        "or (sd3_checkbox and sd3_cache_text_encoder_outputs)",
        'run_cmd.append(rf"{scriptdir}/sd-scripts/flux_train_network.py")',
        'run_cmd.append(rf"{scriptdir}/sd-scripts/sd3_train_network.py")',
    ):
        assert line in lora, line
    flux = (root / "class_flux1.py").read_text(encoding="utf-8")
    for key, default in (("t5xxl_max_token_length", "512"), ("guidance_scale", "3.5"), ("timestep_sampling", '"sigma"'), ("discrete_flow_shift", "3.0")):
        assert f'self.config.get("flux1.{key}", {default})' in flux, key
    sd3 = (root / "class_sd3.py").read_text(encoding="utf-8")
    for key, default in (
        ("weighting_scheme", '"logit_normal"'),
        ("t5xxl_dtype", '"bf16"'),
        ("text_encoder_batch_size", "1"),
        ("logit_std", "1.0"),
        ("mode_scale", "1.29"),
    ):
        assert f'self.config.get("sd3.{key}", {default})' in sd3, key
