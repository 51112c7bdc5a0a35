"""The kohya_ss GUI's LoRA config (gui.json) for a training stage, and what the GUI cannot express of a run."""

from __future__ import annotations

import re

from cml.cache import tokenizers_dir
from cml.plan import Plan, Role, Stage
from cml.render.scripts import CML_NETWORK_MODULE
from cml.render.train_config import mixed_precision, no_half_vae, zero_terminal_snr

# The kohya_ss GUI (bmaltais/kohya_ss 45088f04, common_gui.run_cmd_advanced_training) strips double quotes from
# "additional_parameters", splits it on whitespace and shlex.quote()s each piece before running the list without
# a shell: a piece with a character outside this set arrives with literal quotes, one with a space in two pieces.
# shlex.quote's own safe set is ASCII: any other letter (a path in Japanese, an accent) arrives quoted.
GUI_SAFE_ARG = re.compile(r"[\w@%+=:,./-]+", re.ASCII)


def sd1_v_prediction(plan: Plan) -> bool:
    """An SD1 v-prediction model: the GUI's checkbox cannot say so (ticking no family box unticks it)."""
    return plan.inputs.family == "sd1" and bool(plan.inputs.v_parameterization)


def gui_additional_parameters(plan: Plan, stage: Stage) -> list[str]:
    """sd-scripts options the GUI has no field for, as the pieces the GUI will pass on (paths with '/')."""
    extra: list[str] = []
    if stage.base_weights:
        extra += ["--base_weights", *(p.as_posix() for p in stage.base_weights)]
    if zero_terminal_snr(plan):
        extra.append("--zero_terminal_snr")  # no field for it in the GUI's LoRA presets
    if sd1_v_prediction(plan):
        # The model-family change event (class_source_model.toggle_checkboxes) sets v_parameterization to False
        # when neither v2 nor SDXL is ticked; appended to the command line, the option holds.
        extra.append("--v_parameterization")
    if stage.train.seed == 0:
        extra += ["--seed", "0"]  # the GUI leaves out seed = 0, and sd-scripts then picks a random seed
    if stage.train.torch_compile:
        extra.append("--torch_compile")  # the GUI's dynamo fields are accelerate launch's; this is the trainer's own
    for key, value in stage.train.extra.items():  # train.extra: what cml's train.toml adds, the GUI gets too
        if value is False:
            continue
        extra.append(f"--{key}")
        if value is not True:
            extra += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return extra


def gui_problems(plan: Plan) -> list[str]:
    """Why a stage's gui.json would not give the same run in the kohya GUI; empty when it would."""
    out = []
    for st in plan.stages:
        if st.settings is None or st.role is Role.DIRECT:  # no gui.json for a direct stage
            continue
        bad = [a for a in gui_additional_parameters(plan, st) if not GUI_SAFE_ARG.fullmatch(a)]
        if bad:
            out.append(
                f"{st.name}/gui.json: the kohya GUI splits and quotes additional parameters, so {bad[0]!r} would not arrive intact "
                "(use paths and values of only ASCII letters, digits and @%+=:,./- ; for a path, a run folder named so, "
                'or merge = "checkpoint")'
            )
    return out


def gui_load_order(plan: Plan) -> list[str]:
    """When a stage's gui.json may be loaded: the GUI reads the model file it names to tick the model family, and
    unticks SDXL for a file that does not exist yet (the copy machine model before the merge stage ran)."""
    if plan.inputs.family != "sdxl" or plan.preset.merge != "checkpoint":
        return []
    merged = plan.stage("merge").output.relative_to(plan.run_dir)
    return [
        f"{st.name}/gui.json: load it in the kohya GUI only once {merged} exists (after the merge stage): the GUI ticks SDXL "
        "from the model file it names, and unticks it for a file that is not there yet, which would run the SD1 trainer"
        for st in plan.stages
        if st.settings is not None and st.model == plan.stage("merge").output
    ]


def gui_json(plan: Plan, stage: Stage) -> dict:
    """kohya_ss GUI LoRA config: keys as the GUI's shipped presets/lora/*.json use them.

    Every key whose GUI default would change the run is written (tests/kohya_gui.py maps them the way the
    GUI's command builder does, and tests/sdscripts/test_gui.py checks the result against train.toml).
    """
    s = stage.train
    fam = plan.inputs.family
    return {
        "LoRA_type": "Standard",
        "pretrained_model_name_or_path": str(stage.model),
        "v2": fam == "sd2",
        "v_parameterization": bool(plan.inputs.v_parameterization) and not sd1_v_prediction(plan),  # SD1: additional parameters
        "sdxl": fam == "sdxl",
        "dataset_config": str(stage.dir / "dataset.toml"),
        "output_dir": str(stage.work_dir),
        "output_name": stage.output.stem,
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "save_every_n_epochs": 0,  # GUI default 1: with one image every step is an epoch, so a file per step
        "save_every_n_steps": 0,
        "network_dim": s.dim,
        "network_alpha": int(s.alpha) if float(s.alpha).is_integer() else s.alpha,
        "learning_rate": s.learning_rate,
        "unet_lr": s.learning_rate,
        "text_encoder_lr": 0,  # the GUI's way of saying U-Net only (network_train_unet_only)
        "optimizer": s.optimizer,
        "lr_scheduler": s.scheduler,
        # The GUI reads lr_warmup as a whole percent (update_my_data: int(), 3 of 500 steps = 0.6 % becomes 0);
        # lr_warmup_steps, when above 0, wins and is taken as it is (resolve_lr_warmup_steps): exactly N steps.
        "lr_warmup": 0,
        "lr_warmup_steps": s.warmup_steps,
        "max_train_steps": s.steps,
        "max_train_epochs": 0,
        "epoch": 1,
        "train_batch_size": s.batch_size,
        "seed": s.seed,
        "mixed_precision": mixed_precision(stage),
        "xformers": "sdpa",  # GUI default "xformers"
        "sdxl_no_half_vae": no_half_vae(plan, stage),
        "gradient_checkpointing": bool(s.gradient_checkpointing),
        "cache_latents": True,
        "caption_extension": ".txt",
        "enable_bucket": True,
        "max_resolution": f"{s.resolution},{s.resolution}",
        "sdxl_cache_text_encoder_outputs": fam == "sdxl",
        "max_data_loader_n_workers": 0,
        "log_with": "tensorboard",
        "logging_dir": str(stage.dir / "logs"),
        "additional_parameters": " ".join(gui_additional_parameters(plan, stage)),
    }


def gui_note(plan: Plan) -> str:
    """What the kohya GUI cannot express of this run, for the run folder's README."""
    lines = [
        "",
        "## In the kohya_ss GUI",
        "",
        "`gui.json` gives the same run as `train.toml` (checked against the GUI's command builder at bmaltais/kohya_ss "
        "45088f04), except for what the GUI has no field for:",
        "",
        f"- `tokenizer_cache_dir` ({plan.preset.tokenizer_cache_dir or tokenizers_dir()}): the GUI's run loads the "
        "tokenizer from the Hugging Face hub instead (the same tokenizer; it needs network on its first run).",
    ]
    lines.append(
        f"- `network_module`: cml trains with `{CML_NETWORK_MODULE}` (sd-scripts' networks.lora, exactly faster, and fixed for "
        "`--base_weights`), the GUI with `networks.lora`: the same LoRA file either way."
        + (
            " In the in-memory diff stage, though, `gui.json` passes `--base_weights` in additional parameters, and plain "
            "sd-scripts then also trains `time_emb_proj` modules (its networks.lora extends a shared module list): prefer "
            '`merge = "checkpoint"` for GUI use.'
            if plan.preset.merge == "in_memory"
            else ""
        )
    )
    if sd1_v_prediction(plan):
        lines.append(
            "- v-prediction on an SD1 model: the GUI's v-parameterization box is unticked by its model-family boxes when "
            "neither v2 nor SDXL is ticked, so `gui.json` passes `--v_parameterization` in additional parameters instead; "
            "leave the box as it is."
        )
    direct = [st.name for st in plan.stages if st.role is Role.DIRECT]
    if direct:
        lines.append(
            f"- {', '.join(direct)}: the direct method trains with cml's own trainer (`python -m cml.sd_process.train`, in "
            "`commands.sh`), which the GUI cannot run; there is no `gui.json` for it."
        )
    for note in gui_load_order(plan):
        lines.append(f"- **When to load it:** {note}.")
    for problem in gui_problems(plan):
        lines.append(f"- **Will not work as written:** {problem}.")
    lines += [
        "",
        "The GUI runs the sd-scripts it bundles (v0.11.1 at kohya_ss 45088f04), not the commit cml pins "
        f"({plan.sd_scripts_commit[:10] if plan.sd_scripts_commit else 'unknown'}): options behave the same for this run, "
        "but its code is not the code cml tested.",
    ]
    return "\n".join(lines) + "\n"
