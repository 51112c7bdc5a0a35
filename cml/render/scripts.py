"""Which sd-scripts script runs each stage, and its exact argv (run with sd-scripts' folder as working directory)."""

from __future__ import annotations

import sys
from pathlib import Path

from cml.families import family
from cml.plan import Plan, Role, Stage
from cml.policy import merge_precision

RESIZE_SCRIPT = "networks/resize_lora.py"
NETWORK_MODULE = "networks.lora"
# networks.lora with the --base_weights module-list fix and an exact, faster forward (see cml/sd_process/lora.py).
CML_NETWORK_MODULE = "cml.sd_process.lora"
# sd-scripts' trainers with cml's exact speed-ups (see cml/sd_process/train.py), run as `python -m`.
CML_TRAINER = "cml.sd_process.train"
# sd-scripts' generators, loading SD1/SD2 models without drawing random weights first (see cml/sd_process/gen.py).
CML_GEN = "cml.sd_process.gen"
# A family's checkpoint merge where sd-scripts has no script: its own library functions, in a child (cml/sd_process/merge.py).
CML_MERGE = "cml.sd_process.merge"


def trainer(plan: Plan) -> str:
    """The family's sd-scripts trainer, as a module name (train_network, flux_train_network, ...)."""
    return family(plan.inputs.family).trainer


def gen_command(plan: Plan) -> list[str]:
    """The check's generator for an SD family: gen_img.py / sdxl_gen_img.py, through cml's runner where the exact
    speed-ups are on."""
    script = family(plan.inputs.family).generator
    if plan.preset.speedups:
        return [sys.executable, "-m", CML_GEN, script]
    return [sys.executable, f"{script}.py"]


def save_precision(plan: Plan) -> str:
    """The copy machine model keeps the base's precision: an fp16 base gives an fp16 model of the same size."""
    return {"F16": "fp16", "BF16": "bf16"}.get(plan.inputs.model.dtype or "", "float")


def stage_argv(plan: Plan, stage: Stage) -> list[str]:
    """The exact argv of a stage, run with sd-scripts' folder as working directory."""
    fam = plan.inputs.family
    if stage.kind == "train":
        config = ["--config_file", str(stage.dir / "train.toml")]
        if stage.role is Role.DIRECT:  # cml's trainer: the direct method's step (cml/sd_process/train.py)
            d = plan.preset.direct(stage.target or "")
            direct = ["--cml_direct_a", str(stage.dir / "dataset_a.toml"), "--cml_direct_multiplier", f"{d.multiplier}"]
            direct += ["--cml_direct_timesteps", f"{d.timesteps[0]},{d.timesteps[1]}"]
            return [sys.executable, "-m", CML_TRAINER, trainer(plan), *direct, *config]
        if plan.preset.speedups:
            return [sys.executable, "-m", CML_TRAINER, trainer(plan), *config]
        return [sys.executable, f"{trainer(plan)}.py", *config]
    if stage.kind == "average":
        # merge_lora.py --concat: n LoRAs at ratio 1, their ranks stacked under the first one's alpha, give the mean of
        # their changes (alpha / rank falls n-fold), exactly
        loras = [plan.stage(d).output for d in stage.depends]
        return lora_into_lora(plan, stage, loras, [1.0] * len(loras))
    if stage.kind == "slider":
        # LoRA into LoRA: ratio r scales lora_down by r and lora_up by |r| (r acts as sign(r) r^2), and --concat stacks
        # the ranks under the first LoRA's alpha, halving alpha / rank: ratios 1 and -1 give (L_ab - L_ba) / 2.
        return lora_into_lora(plan, stage, [plan.stage(d).output for d in stage.depends], [1.0, -1.0])
    if stage.kind == "merge":
        copy = plan.stage(stage.depends[0])
        prec = merge_precision(plan.preset, plan.inputs)
        out = str(stage.work_dir / stage.output.name)
        script = family(fam).merge_script
        if script is None:  # no script in sd-scripts: its library functions, in cml's child (cml/sd_process/merge.py)
            return [sys.executable, "-m", CML_MERGE, fam, "--base", str(stage.model), "--lora", str(copy.output), "--save_to", out]
        if fam == "flux":
            # flux_merge_lora.py: the DiT alone (the text encoders are not trained), in the base's own precision
            argv = [sys.executable, script, "--flux_model", str(stage.model), "--models", str(copy.output), "--ratios", "1.0", "--save_to", out]
            return [*argv, "--precision", prec, "--save_precision", save_precision(plan)]
        argv = [sys.executable, script]
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
    if stage.kind == "comfy":
        return [sys.executable, str(family(fam).comfy_converter), str(stage.model), str(stage.work_dir / stage.output.name)]
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


def script_label(argv: list[str]) -> str:
    """The sd-scripts script a stage's argv runs, for messages: "train_network.py", also when cml's trainer runs it."""
    if argv[1:2] == ["-m"]:
        return f"{argv[3]}.py" if argv[2] in (CML_TRAINER, CML_GEN) else f"{argv[2]} {argv[3]}"
    return Path(argv[1]).name


def lora_into_lora(plan: Plan, stage: Stage, loras: list, ratios: list[float]) -> list[str]:
    """The family's LoRA-into-LoRA merge script with --concat (the ranks stacked, no SVD: exact), in float, saved fp16."""
    script = str(family(plan.inputs.family).lora_merge_script)
    return [sys.executable, script, "--models", *map(str, loras), "--ratios", *map(str, ratios), "--concat"] + [
        "--save_to",
        str(stage.work_dir / stage.output.name),
        "--precision",
        "float",
        "--save_precision",
        "fp16",
    ]
