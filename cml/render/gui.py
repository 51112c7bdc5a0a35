"""The kohya_ss GUI's LoRA config (gui.json) for a training stage, and what the GUI cannot express of a run."""

from __future__ import annotations

import re

from cml.cache import tokenizers_dir
from cml.families import family
from cml.plan import Plan, Role, Stage
from cml.render.scripts import CML_NETWORK_MODULE
from cml.render.train_config import mixed_precision, no_half_vae, training_toml, zero_terminal_snr

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
    fields = set(dit_fields(plan, stage))
    for key, value in stage.train.extra.items():  # train.extra: what cml's train.toml adds, the GUI gets too
        if value is False or key in fields:  # a key with its own GUI field goes there (dit_fields)
            continue
        extra.append(f"--{key}")
        if value is not True:
            extra += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return extra


def has_gui(plan: Plan) -> bool:
    """Whether cml writes gui.json for the plan's family: those whose GUI run cml checks against the GUI's own command
    builder (tests/kohya_gui.py): SD1.x, SD2.x, SDXL, FLUX.1 and SD3 (cml/families.py's ``gui``)."""
    return family(plan.inputs.family).gui


# The GUI's fields for the FLUX.1 and SD3 options of cml's train.toml (kohya_gui/lora_gui.py train_model: its
# config_toml_data takes each from the field named here, for the family whose box is ticked). An option missing from
# train.toml gets the value sd-scripts gives it, written out where the GUI's widget default would differ.
DIT_FIELDS = {
    "flux": {
        "ae": "ae",
        "clip_l": "clip_l",
        "t5xxl": "t5xxl",
        "timestep_sampling": "timestep_sampling",  # widget default "sigma"
        "discrete_flow_shift": "discrete_flow_shift",  # widget default 3.0
        "model_prediction_type": "model_prediction_type",  # widget default "sigma_scaled"
        "guidance_scale": "guidance_scale",  # widget default 3.5
        "t5xxl_max_token_length": "t5xxl_max_token_length",  # widget default 512; sd-scripts: 256 for schnell
        "apply_t5_attn_mask": "apply_t5_attn_mask",
    },
    "sd3": {"clip_l": "sd3_clip_l", "clip_g": "clip_g", "t5xxl": "sd3_t5xxl", "vae": "vae", "weighting_scheme": "weighting_scheme"},
}
# sd-scripts' own value of an option train.toml leaves out, where the GUI's widget default differs.
SD_SCRIPTS_DEFAULTS: dict[str, dict[str, object]] = {
    "flux": {
        "timestep_sampling": "sigma",
        "discrete_flow_shift": 3.0,
        "model_prediction_type": "sigma_scaled",
        "guidance_scale": 3.5,
        "apply_t5_attn_mask": False,
    },
    "sd3": {"weighting_scheme": "uniform"},
}


def dit_fields(plan: Plan, stage: Stage) -> dict:
    """gui.json's FLUX.1 / SD3 fields for a stage: train.toml's values (model files, recipe, train.extra) in the
    GUI's field names."""
    fam = plan.inputs.family
    if fam not in DIT_FIELDS:
        return {}
    toml = {k: v for k, v in training_toml(plan, stage).items() if k in DIT_FIELDS[fam]}
    values = {**SD_SCRIPTS_DEFAULTS[fam], **toml}
    if fam == "flux" and "t5xxl_max_token_length" not in values:  # flux_train_network.get_tokenize_strategy
        values["t5xxl_max_token_length"] = 256 if plan.inputs.model.variant == "schnell" else 512
    return {DIT_FIELDS[fam][k]: v for k, v in values.items()}


def gui_problems(plan: Plan) -> list[str]:
    """Why a stage's gui.json would not give the same run in the kohya GUI; empty when it would."""
    if not has_gui(plan):
        return []
    out = []
    fam = family(plan.inputs.family)
    if not plan.inputs.model.gui_detected:
        names = [st.name for st in plan.stages if st.settings is not None and st.role is not Role.DIRECT and st.model == plan.inputs.model.path]
        out.append(
            f"{', '.join(n + '/gui.json' for n in names)}: the kohya GUI does not recognise {plan.inputs.model.path.name} as {fam.title} (its model "
            f"detection, kohya_gui/sd_modeltype.py, reads {fam.gui_detect[-1]}), so Load unticks the {fam.title} box and the run "
            f"would use the SD1 trainer: tick {fam.title} by hand after Load, before Start"
        )
    for st in plan.stages:
        if st.settings is None or st.role is Role.DIRECT:  # no gui.json for a direct stage
            continue
        bad = [a for a in gui_additional_parameters(plan, st) if not GUI_SAFE_ARG.fullmatch(a)]
        if bad:
            paths = {p.as_posix() for p in st.base_weights}
            fix = (
                'a run folder whose path holds only those, or merge = "checkpoint" (no path in additional parameters)'
                if bad[0] in paths
                else "write that train.extra value with only those, or type it into the GUI's own field for it"
            )
            out.append(
                f"{st.name}/gui.json: the kohya GUI splits and quotes additional parameters, so {bad[0]!r} would not arrive intact "
                f"(they must be ASCII letters, digits and @%+=:,./- only: {fix})"
            )
        if st.base_weights and fam.network_module == "networks.lora":  # cml's own module fixes it (cml/sd_process/lora.py)
            out.append(
                f"{st.name}/gui.json: in the kohya GUI this stage trains more modules than cml's run (sd-scripts' networks.lora "
                "with --base_weights also puts LoRA on every time_emb_proj: 684 keys instead of 576 on SD1.5), so its LoRA is "
                'not the same; for GUI use, plan with merge = "checkpoint"'
            )
    return out


# What the GUI's model detection (common_gui.set_pretrained_model_name_or_path_input, sd_modeltype.SDModelType) ticks
# from a model file, and what a file that is not there yet (all boxes unticked) makes of the run.
LOAD_ORDER = {
    "sd2": ("v2 (and so v-parameterization)", "run the SD1 objective on an SD2 model"),
    "sdxl": ("SDXL", "run the SD1 trainer"),
    "flux": ("FLUX.1", "run the SD1 trainer on a FLUX.1 model"),
    "sd3": ("SD3", "run the SD1 trainer on an SD3 model"),
}


def gui_load_order(plan: Plan) -> list[str]:
    """When a stage's gui.json may be loaded: the GUI reads the model file it names to tick the model family, and
    unticks every box for a file that does not exist yet (a copy machine model before its merge stage ran); with v2
    unticked, its model-family change event unticks v-parameterization too (class_source_model.toggle_checkboxes)."""
    if plan.inputs.family not in LOAD_ORDER or not has_gui(plan):
        return []
    boxes, wrong = LOAD_ORDER[plan.inputs.family]
    made = {s.output: s for s in plan.stages if s.kind == "merge"}
    return [
        f"{st.name}/gui.json: load it in the kohya GUI only once {made[st.model].output.relative_to(plan.run_dir)} exists (after the "
        f"{made[st.model].name} stage): the GUI ticks {boxes} from the model file it names, and unticks it for a file that is "
        f"not there yet, which would {wrong}"
        for st in plan.stages
        if st.settings is not None and st.role is not Role.DIRECT and st.model in made
    ]


def gui_json(plan: Plan, stage: Stage) -> dict:
    """kohya_ss GUI LoRA config: keys as the GUI's shipped presets/lora/*.json use them.

    Every key whose GUI default would change the run is written (tests/kohya_gui.py maps them the way the
    GUI's command builder does, and tests/sdscripts/test_gui.py checks the result against train.toml).
    """
    s = stage.train
    fam = plan.inputs.family
    return {
        "LoRA_type": "Flux1" if fam == "flux" else "Standard",  # lora_gui.py: Flux1 -> networks.lora_flux; SD3 + Standard -> lora_sd3
        "pretrained_model_name_or_path": str(stage.model),
        "v2": fam == "sd2",
        "v_parameterization": bool(plan.inputs.v_parameterization) and not sd1_v_prediction(plan),  # SD1: additional parameters
        "sdxl": fam == "sdxl",
        **({"flux1_checkbox": True, "flux1_cache_text_encoder_outputs": True} if fam == "flux" else {}),
        **({"sd3_checkbox": True, "sd3_cache_text_encoder_outputs": True} if fam == "sd3" else {}),
        **dit_fields(plan, stage),
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
        # With --torch_compile sd-scripts compiles with --dynamo_backend (train_util.prepare_accelerator), and the GUI
        # writes its accelerate field's value there, "no" by default: the GUI would train without compiling.
        **({"dynamo_backend": "inductor"} if s.torch_compile else {}),
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
    if not has_gui(plan):
        title = family(plan.inputs.family).title
        return (
            f"\n## In the kohya_ss GUI\n\nNo `gui.json` for {title}: cml writes GUI files only where it has checked that they give "
            "the same run through the GUI's own code (SD1.x, SD2.x, SDXL, FLUX.1, SD3; the GUI at 45088f04 has modes for Anima, "
            "Lumina and HunyuanImage too, which cml has not modelled). `train.toml` and `dataset.toml` run with "
            f"`{family(plan.inputs.family).trainer}.py --config_file train.toml` (see `commands.sh`).\n"
        )
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
    if family(plan.inputs.family).network_module == "networks.lora":
        lines.append(
            f"- `network_module`: cml trains with `{CML_NETWORK_MODULE}` (sd-scripts' networks.lora, exactly faster, and fixed for "
            "`--base_weights`), the GUI with `networks.lora`: the same LoRA file either way."
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
