"""tests/kohya_gui.py against the kohya_ss GUI's own builder functions (bmaltais/kohya_ss 45088f04).

Needs a checkout of the GUI: CML_KOHYA_SS=/path/to/kohya_ss (its kohya_gui/ package; gradio and easygui are
stubbed, the functions used do not touch them). Skipped, with that reason, where it is not set.
"""

import os
import sys
import types
from pathlib import Path

import pytest

from cml.kohya.render import gui_json
from tests.conftest import plan_for
from tests.kohya_gui import gui_to_options, warmup_steps


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


@pytest.mark.parametrize("pct,steps", [(0, 500), (0.6, 500), (10, 40), (7.5, 40)])
def test_warmup_percent_as_the_gui_rounds_it(gui_builder, pct, steps):
    frac = gui_builder.resolve_lr_warmup_steps(pct, 0)
    assert warmup_steps(pct, {"max_train_steps": steps}) == (round(frac * steps) if isinstance(frac, float) else frac)
