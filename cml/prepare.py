"""Preparing a run: preset -> config -> inputs -> plan, and every check that can be made before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cml.cache import tokenizers_dir
from cml.console import say
from cml.errors import ConfigErrors, InputError
from cml.inputs import load_inputs
from cml.paths import submodule
from cml.plan import Plan
from cml.preset import find_preset, load_preset
from cml.preset.models import Preset
from cml.preset.shipped import is_shipped
from cml.render.gui import gui_load_order, gui_problems
from cml.render.scripts import trainer
from cml.render.train_config import refuse_managed_extra
from cml.render.trainer_options import check_extra
from cml.rundir import check_run_dir, is_run_folder, own_preset
from cml.sdscripts import SdScripts, SdScriptsNotFound, commit_warning, locate
from cml.sdscripts.tokenizers import check_tokenizers
from cml.stages import build_plan


def prepare(
    preset_arg: str | Path,
    sets: list[str] | None,
    sd_option: str | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    run_dir: Path | None = None,
    need_sd: bool = True,
) -> tuple[Plan, SdScripts]:
    """Config -> inputs -> plan. Every input check happens here, before anything runs or is written.

    need_sd=False (cml plan): without sd-scripts the plan names the submodule, and train.extra is not checked.
    run_dir (cml check): the run folder as it is now, wherever it was moved; its name is not the preset's to judge.
    """
    preset_path = find_preset(preset_arg)
    migrated: list[str] = []
    preset, digest = load_preset(preset_path, sets, overrides, notes=migrated)
    for n in migrated:
        say(f"note: {n}")
    try:
        sd = locate(sd_option)
    except SdScriptsNotFound:
        if need_sd:
            raise
        sub = submodule()
        say("warning: sd-scripts not found; commands.sh assumes " + ("the sd-scripts/ submodule" if sub else "CML_SD_SCRIPTS names its folder"))
        sd = SdScripts(sub or Path("sd-scripts"), None, "not found", present=False)
    w = commit_warning(sd) if sd.present else None
    if w:
        say(w)
    try:
        inputs = load_inputs(preset)
    except InputError as e:
        if is_shipped(preset_path) and preset_path.stem == "demo":  # its placeholders are filled by `cml demo`
            hint = "`cml demo` runs the demo with its own model and image A"
            if isinstance(e, ConfigErrors):
                raise ConfigErrors([*e.lines, hint]) from None
            raise InputError(e.what, e.where, hint) from None
        raise
    for n in inputs.notes:
        say(f"note: {n}")
    if run_dir is None and "output_dir" not in (overrides or {}) and is_run_folder(preset_path.parent) and preset_path.name == "preset.toml":
        # a run folder's own preset.toml (`cml run RUN/preset.toml`): the run is where the folder is now, wherever it
        # was when the preset was written (a moved folder is not written back at its old place)
        run_dir = preset_path.parent.resolve()
    plan = build_plan(preset, digest, inputs, sd.commit, run_dir=run_dir)
    say(device_line(plan))
    if any(st.settings is not None and st.train.torch_compile for st in plan.stages) and plan.inputs.device == "cpu":
        say("warning: train.torch_compile on a CPU: inductor compiles for minutes before the first step (7 min for a 2-step stage, measured on 2 cores)")
    for st in plan.stages:
        for n in st.notes:
            say(f"note: {st.name}: {n}")
    for problem in gui_problems(plan):
        say(f"warning: {problem}")
    for note in gui_load_order(plan):
        say(f"note: {note}")
    refuse_managed_extra(plan)
    if sd.present:
        check_extra(plan, sd, trainer(plan))
    check_tokenizers(plan.inputs.family, plan.preset.tokenizer_cache_dir or tokenizers_dir())
    own = own_preset(preset_path, plan.run_dir)
    check_run_dir(plan.run_dir, preset_file=None if own else preset_path, inputs=input_files(plan.preset), sd_scripts=sd.path)
    return plan, sd


def input_files(preset: Preset) -> list[Path]:
    """The user's files a run reads: the run folder must not hold or contain them."""
    out = [*preset.source, preset.base_model, *preset.check.models]
    for t in preset.targets.values():
        out += t.images
    return out


def device_line(plan: Plan) -> str:
    """Where and how the training stages run, as the plan resolved it."""
    g = plan.inputs.gpu
    where = f"cuda ({g.describe()})" if g else plan.inputs.device
    train = [s for s in plan.stages if s.settings is not None]
    precs = sorted({s.train.precision for s in train})
    opts = sorted({s.train.optimizer for s in train})
    return f"device: {where}; precision {', '.join(precs)}; optimizer {', '.join(opts)}"
