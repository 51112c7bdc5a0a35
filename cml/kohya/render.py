"""The files kohya's tools read, per stage: dataset TOML, training TOML, GUI JSON, argv, commands.sh.

Everything here is data built from a Plan; nothing runs. TOML is written by tomli-w
(sd-scripts reads it back with ``toml`` 0.10.2, so arrays never mix ints and floats).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import tomli_w

from cml.errors import InputError
from cml.files import atomic_write
from cml.images import save_png
from cml.paths import cache_root
from cml.plan import Plan, Stage, merge_precision
from cml.rundir import mark

SCRIPTS = {
    "sd1": {"train": "train_network.py", "merge": "networks/merge_lora.py", "gen": "gen_img.py"},
    "sd2": {"train": "train_network.py", "merge": "networks/merge_lora.py", "gen": "gen_img.py"},
    "sdxl": {"train": "sdxl_train_network.py", "merge": "networks/sdxl_merge_lora.py", "gen": "sdxl_gen_img.py"},
}
RESIZE_SCRIPT = "networks/resize_lora.py"
NETWORK_MODULE = "networks.lora"
# networks.lora with the --base_weights module-list fix (see cml/kohya/lora_fixed.py).
FIXED_NETWORK_MODULE = "cml.kohya.lora_fixed"
# Options that change what cml's own options mean: the step count (max_train_epochs), the files a stage writes
# (save_*), the weights it starts from (network_weights, resume), the run itself (config_file, output_config).
OVERRIDERS = frozenset(
    {
        "max_train_epochs",
        "save_every_n_epochs",
        "save_every_n_steps",
        "save_last_n_epochs",
        "save_last_n_steps",
        "save_last_n_epochs_state",
        "save_last_n_steps_state",
        "save_state",
        "save_state_on_train_end",
        "network_weights",
        "dim_from_weights",
        "resume",
        "config_file",
        "output_config",
        "network_train_text_encoder_only",
        "text_encoder_lr",
    }
)
# Options cml writes only in some plans (SD2, v-prediction, SDXL, half precision, in-memory merge, ztsnr).
# tests/unit/test_render.py renders every kind of plan and checks that each key cml writes is here or always written.
CONDITIONAL = frozenset(
    {
        "v2",
        "v_parameterization",
        "cache_text_encoder_outputs",
        "no_half_vae",
        "zero_terminal_snr",
        "base_weights",
        "base_weights_multiplier",
    }
)


def default_tokenizer_cache() -> Path:
    return cache_root() / "tokenizers"


def mixed_precision(stage: Stage) -> str:
    """sd-scripts' --mixed_precision for the stage's resolved precision (plan.resolve_precision decides it)."""
    p = stage.train.precision
    assert p != "auto", "the plan resolves precision"
    return {"fp32": "no"}.get(p, p)


def no_half_vae(plan: Plan, stage: Stage) -> bool:
    """SDXL's VAE overflows in fp16. At the pinned commit cached latents get no NaN check, so NaN latents would
    train an all-zero LoRA: keep the SDXL VAE in fp32 whenever the stage runs in half precision."""
    return plan.inputs.family == "sdxl" and mixed_precision(stage) != "no"


def zero_terminal_snr(plan: Plan) -> bool:
    """The base marks zero-terminal-SNR training (`ztsnr` key, e.g. NoobAI-XL v-pred): train the LoRA the same way."""
    return "ztsnr" in plan.inputs.model.markers


def dataset_toml(stage: Stage) -> dict:
    s = stage.train
    return {
        "general": {
            "resolution": s.resolution,
            "batch_size": s.batch_size,
            "enable_bucket": True,
            "bucket_no_upscale": True,
            "min_bucket_reso": min(256, s.resolution),
            "max_bucket_reso": max(1024, s.resolution),
            "bucket_reso_steps": 64,
            "caption_extension": ".txt",
            "shuffle_caption": False,
        },
        "datasets": [{"subsets": [{"image_dir": str(stage.images_dir), "num_repeats": 1}]}],
    }


def managed_keys(plan: Plan, stage: Stage) -> frozenset[str]:
    """What train.extra may not set: every option cml writes, may write in another plan, or that overrides those."""
    return frozenset(managed_options(plan, stage)) | CONDITIONAL | OVERRIDERS


def training_toml(plan: Plan, stage: Stage) -> dict:
    s = stage.train
    cfg = managed_options(plan, stage)
    clash = sorted(set(s.extra) & managed_keys(plan, stage))
    if clash:
        raise InputError(
            f"train.extra sets {', '.join(clash)}, which cml manages",
            f"{stage.name} settings",
            "use the preset's own keys (train.steps, train.dim, ...) instead",
        )
    cfg.update(s.extra)
    return cfg


def managed_options(plan: Plan, stage: Stage) -> dict:
    """The training options cml writes for a stage (train.extra not included)."""
    s = stage.train
    fam = plan.inputs.family
    cfg: dict = {
        "pretrained_model_name_or_path": str(stage.model),
        "dataset_config": str(stage.dir / "dataset.toml"),
        "output_dir": str(stage.work_dir),
        "output_name": stage.output.stem,
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "network_module": FIXED_NETWORK_MODULE if stage.base_weights else NETWORK_MODULE,
        "network_dim": s.dim,
        "network_alpha": float(s.alpha),
        "network_train_unet_only": True,
        "optimizer_type": s.optimizer,
        "learning_rate": float(s.learning_rate),
        "unet_lr": float(s.learning_rate),
        "lr_scheduler": s.scheduler,
        "lr_warmup_steps": s.warmup_steps,
        "max_train_steps": s.steps,
        "seed": s.seed,
        "mixed_precision": mixed_precision(stage),
        "gradient_checkpointing": bool(s.gradient_checkpointing),
        "cache_latents": True,
        "sdpa": True,
        "max_data_loader_n_workers": 0,
        "logging_dir": str(stage.dir / "logs"),
        "log_with": "tensorboard",
        "tokenizer_cache_dir": str(plan.preset.tokenizer_cache_dir or default_tokenizer_cache()),
    }
    if fam == "sd2":
        cfg["v2"] = True
    if plan.inputs.v_parameterization:
        cfg["v_parameterization"] = True
    if fam == "sdxl":
        cfg["cache_text_encoder_outputs"] = True  # U-Net only: the text encoders never change
    if no_half_vae(plan, stage):
        cfg["no_half_vae"] = True
    if zero_terminal_snr(plan):
        cfg["zero_terminal_snr"] = True
    if stage.base_weights:
        cfg["base_weights"] = [str(p) for p in stage.base_weights]
        cfg["base_weights_multiplier"] = [1.0] * len(stage.base_weights)
    return cfg


def save_precision(plan: Plan) -> str:
    """The copy machine model keeps the base's precision: an fp16 base gives an fp16 model of the same size."""
    return {"F16": "fp16", "BF16": "bf16"}.get(plan.inputs.model.dtype or "", "float")


def stage_argv(plan: Plan, stage: Stage) -> list[str]:
    """The exact argv of a stage, run with sd-scripts' folder as working directory."""
    fam = plan.inputs.family
    if stage.kind == "train":
        return [sys.executable, SCRIPTS[fam]["train"], "--config_file", str(stage.dir / "train.toml")]
    if stage.kind == "merge":
        copy = plan.stage("copy")
        prec = merge_precision(plan.preset, plan.inputs)
        argv = [sys.executable, SCRIPTS[fam]["merge"]]
        if fam == "sd2":
            argv.append("--v2")
        argv += [
            "--sd_model",
            str(stage.model),
            "--models",
            str(copy.output),
            "--ratios",
            "1.0",
            "--save_to",
            str(stage.work_dir / stage.output.name),
            "--precision",
            prec,
            "--save_precision",
            save_precision(plan),
        ]
        return argv
    if stage.kind == "resize":
        return [
            sys.executable,
            RESIZE_SCRIPT,
            "--model",
            str(stage.model),
            "--new_rank",
            str(plan.preset.resize_to),
            "--save_to",
            str(stage.work_dir / stage.output.name),
            "--save_precision",
            "fp16",
            "--device",
            "cuda" if plan.inputs.device == "cuda" else "cpu",
        ]
    raise ValueError(stage.kind)


# The kohya_ss GUI (bmaltais/kohya_ss 45088f04, common_gui.run_cmd_advanced_training) strips double quotes from
# "additional_parameters", splits it on whitespace and shlex.quote()s each piece before running the list without
# a shell: a piece with a character outside this set arrives with literal quotes, one with a space in two pieces.
GUI_SAFE_ARG = re.compile(r"^[\w@%+=:,./-]+$")


def gui_additional_parameters(plan: Plan, stage: Stage) -> list[str]:
    """sd-scripts options the GUI has no field for, as the pieces the GUI will pass on (paths with '/')."""
    extra: list[str] = []
    if stage.base_weights:
        extra += ["--base_weights", *(p.as_posix() for p in stage.base_weights)]
    if zero_terminal_snr(plan):
        extra.append("--zero_terminal_snr")  # no field for it in the GUI's LoRA presets
    if stage.train.seed == 0:
        extra += ["--seed", "0"]  # the GUI leaves out seed = 0, and sd-scripts then picks a random seed
    return extra


def gui_problems(plan: Plan) -> list[str]:
    """Why a stage's gui.json would not give the same run in the kohya GUI; empty when it would."""
    out = []
    for st in plan.stages:
        if st.settings is None:
            continue
        bad = [a for a in gui_additional_parameters(plan, st) if not GUI_SAFE_ARG.match(a)]
        if bad:
            out.append(
                f"{st.name}/gui.json: the kohya GUI splits and quotes additional parameters, so {bad[0]!r} would not arrive intact "
                '(use a run folder whose path has only letters, digits and @%+=:,./- , or merge = "checkpoint")'
            )
    return out


def gui_json(plan: Plan, stage: Stage) -> dict:
    """kohya_ss GUI LoRA config: keys as the GUI's shipped presets/lora/*.json use them.

    Every key whose GUI default would change the run is written (tests/kohya_gui.py maps them the way the
    GUI's command builder does, and tests/sdscripts/test_gui.py checks the result against train.toml).
    """
    s = stage.train
    fam = plan.inputs.family
    pct = 100 * s.warmup_steps / s.steps  # the GUI takes warm-up in percent and rounds it back to steps
    return {
        "LoRA_type": "Standard",
        "pretrained_model_name_or_path": str(stage.model),
        "v2": fam == "sd2",
        "v_parameterization": bool(plan.inputs.v_parameterization),
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
        "lr_warmup": int(pct) if float(pct).is_integer() else pct,
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


def commands_sh(plan: Plan, sd_path: Path) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# The sd-scripts commands of this run, as cml runs them. Run from anywhere with sd-scripts' Python active.",
        "# cml writes each output under its stage's work/ folder, checks it, then moves it to its final name.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(sd_path))}",
        'export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # networks/*.py import library/',
        "",
    ]
    for st in plan.stages:
        argv = stage_argv(plan, st)
        lines.append(f"# {st.name}: {st.what}")
        lines.append(shlex.join(["mkdir", "-p", str(st.work_dir)]))  # the trainers make theirs; merge_lora.py does not
        lines.append(shlex.join(["python", *argv[1:]]))
        lines.append(shlex.join(["mv", str(st.work_dir / st.output.name), str(st.output)]))
        lines.append("")
    return "\n".join(lines)


RUN_README = """# {name}: files of this run

| stage | what | output |
|---|---|---|
{rows}

Per training stage folder:
- `dataset.toml`: kohya dataset config (`--dataset_config`, or the kohya_ss GUI's "Dataset config" field).
- `train.toml`: every other option, for `train_network.py --config_file train.toml`.
- `gui.json`: the same stage for the kohya_ss GUI: LoRA tab -> "Load config".
- `images/`: the staged images (RGB PNG); a caption `.txt` beside each only when the caption is not empty.
- `log.txt`, `logs/`: the trainer's output and TensorBoard logs; `record.json`: what the output was made from.

`commands.sh` holds the exact commands; `preset.toml` the fully resolved preset (itself a valid preset).
{gui_note}"""


def gui_note(plan: Plan) -> str:
    """What the kohya GUI cannot express of this run, for the run folder's README."""
    lines = [
        "",
        "## In the kohya_ss GUI",
        "",
        "`gui.json` gives the same run as `train.toml` (checked against the GUI's command builder at bmaltais/kohya_ss "
        "45088f04), except for what the GUI has no field for:",
        "",
        f"- `tokenizer_cache_dir` ({plan.preset.tokenizer_cache_dir or default_tokenizer_cache()}): the GUI's run loads the "
        "tokenizer from the Hugging Face hub instead (the same tokenizer; it needs network on its first run).",
    ]
    if plan.preset.merge == "in_memory":
        lines.append(
            "- `network_module` of the in-memory diff stage: `gui.json` passes `--base_weights` in additional parameters, and "
            "plain sd-scripts then also trains `time_emb_proj` modules (its networks.lora extends a shared module list); cml's "
            f"own runs use `{FIXED_NETWORK_MODULE}` to train exactly the modules the checkpoint mode trains. Prefer "
            '`merge = "checkpoint"` for GUI use.'
        )
    for problem in gui_problems(plan):
        lines.append(f"- **Will not work as written:** {problem}.")
    return "\n".join(lines) + "\n"


def write_file(path: Path, text: str) -> None:
    """Write only when the content changed (keeps mtimes stable for resumed runs)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, text)


def stage_images(stage: Stage) -> None:
    for i, img in enumerate(stage.images):
        save_png(img, stage.images_dir / f"{i:03d}.png")
        cap = stage.images_dir / f"{i:03d}.txt"
        if stage.train.caption:
            write_file(cap, stage.train.caption)
        elif cap.exists():
            cap.unlink()  # sd-scripts refuses empty caption files; no file means an empty caption


def render(plan: Plan, sd_path: Path) -> list[Path]:
    """Write every kohya file of the plan into the run folder. Returns the files written."""
    written = []
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    mark(plan.run_dir)
    for st in plan.stages:
        st.dir.mkdir(parents=True, exist_ok=True)
        if st.kind == "train":
            stage_images(st)
            for name, text in (
                ("dataset.toml", tomli_w.dumps(dataset_toml(st))),
                ("train.toml", tomli_w.dumps(training_toml(plan, st))),
                ("gui.json", json.dumps(gui_json(plan, st), indent=2, ensure_ascii=False) + "\n"),
            ):
                write_file(st.dir / name, text)
                written.append(st.dir / name)
        else:
            write_file(st.dir / "command.json", json.dumps({"cwd": str(sd_path), "argv": stage_argv(plan, st)}, indent=2, ensure_ascii=False) + "\n")
            written.append(st.dir / "command.json")
    write_file(plan.run_dir / "commands.sh", commands_sh(plan, sd_path))
    write_file(plan.run_dir / "preset.toml", tomli_w.dumps(plan.preset.to_toml_dict()))
    rows = "\n".join(f"| `{s.name}/` | {s.what} | `{s.output.relative_to(plan.run_dir)}` |" for s in plan.stages)
    write_file(plan.run_dir / "README.md", RUN_README.format(name=plan.preset.name, rows=rows, gui_note=gui_note(plan)))
    written += [plan.run_dir / "commands.sh", plan.run_dir / "preset.toml", plan.run_dir / "README.md"]
    return written
