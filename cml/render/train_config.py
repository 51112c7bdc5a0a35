"""The training configuration of a stage: kohya's dataset TOML and the trainer's options (train.toml).

Everything here is data built from a Plan; nothing runs or is written. TOML is written by tomli-w elsewhere
(sd-scripts reads it back with ``toml`` 0.10.2, so arrays never mix ints and floats).
"""

from __future__ import annotations

from pathlib import Path

from cml.cache import tokenizers_dir
from cml.errors import InputError
from cml.families import FAMILIES, family
from cml.plan import Plan, Stage
from cml.render.scripts import CML_NETWORK_MODULE, NETWORK_MODULE

# Options that change what cml's own options mean: the step count (max_train_epochs), the training state a stage
# saves and resumes from (save_state*, resume), the weights it starts from (network_weights), the run itself
# (config_file, output_config). Intermediate LoRA saves and sample images are allowed: cml keeps them in <stage>/extra/.
OVERRIDERS = frozenset(
    {
        "max_train_epochs",
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
        "torch_compile",
        "base_weights",
        "base_weights_multiplier",
        *(key for f in FAMILIES.values() for key in f.files),
    }
)


def mixed_precision(stage: Stage) -> str:
    """sd-scripts' --mixed_precision for the stage's resolved precision (policy.resolve_precision decides it)."""
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


def num_repeats(stage: Stage) -> int:
    """Enough repeats of the stage's images to fill a batch: sd-scripts batches an epoch's images only, so one image at
    batch_size 4 with 1 repeat trains at batch 1. At batch 1 (the article) this is 1, as sd-scripts' default."""
    n = max(1, len(stage.images))
    return -(-stage.train.batch_size // n)


def dataset_toml(stage: Stage, images_dir: Path | None = None) -> dict:
    """kohya's dataset config of a stage (or of its A images: the direct method's dataset_a.toml)."""
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
        "datasets": [{"subsets": [{"image_dir": str(images_dir or stage.images_dir), "num_repeats": num_repeats(stage)}]}],
    }


def managed_keys(plan: Plan, stage: Stage) -> frozenset[str]:
    """What train.extra may not set: every option cml writes, may write in another plan, or that overrides those."""
    return frozenset(managed_options(plan, stage)) | CONDITIONAL | OVERRIDERS


def refuse_managed_extra(plan: Plan) -> None:
    """train.extra may add trainer options, never replace one cml manages: refused at plan time, all stages at once."""
    lines = []
    for st in plan.stages:
        if st.settings is not None:
            clash = sorted(set(st.train.extra) & managed_keys(plan, st))
            if clash:
                lines.append(f"{st.name}: train.extra sets {', '.join(clash)}, which cml manages")
    if lines:
        raise InputError("; ".join(lines), "train.extra", "use the preset's own keys (train.steps, train.dim, ...) instead")


def training_toml(plan: Plan, stage: Stage) -> dict:
    """train.toml: the options cml manages, the family's recipe flags (sd-scripts' documented settings, cml/families.py),
    then train.extra, which may change a recipe flag but no option cml manages (refuse_managed_extra has checked)."""
    return {**managed_options(plan, stage), **family(plan.inputs.family).recipe, **stage.train.extra}


def network_module(plan: Plan, stage: Stage) -> str:
    """The family's LoRA module (cml/families.py). For networks.lora (SD1/SD2/SDXL): cml's (the --base_weights fix; an
    exact, faster forward) where speed-ups are on or the fix is needed; either way the file written is a plain
    networks.lora LoRA."""
    own = family(plan.inputs.family).network_module
    if own == NETWORK_MODULE and (plan.preset.speedups or stage.base_weights):
        return CML_NETWORK_MODULE
    return own


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
        "network_module": network_module(plan, stage),
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
        "tokenizer_cache_dir": str(plan.preset.tokenizer_cache_dir or tokenizers_dir()),
    }
    f = family(fam)
    for key, path in plan.inputs.model_files.items():  # the family's other files: its trainer's options of those names
        cfg[key] = str(path)
    if fam == "sd2":
        cfg["v2"] = True
    if plan.inputs.v_parameterization:
        cfg["v_parameterization"] = True
    if f.text_encoder_cache:
        cfg["cache_text_encoder_outputs"] = True  # U-Net (DiT) only: the text encoders never change
    if no_half_vae(plan, stage):
        cfg["no_half_vae"] = True
    if s.torch_compile:
        cfg["torch_compile"] = True  # sd-scripts' default dynamo_backend: inductor
    if zero_terminal_snr(plan):
        cfg["zero_terminal_snr"] = True
    if stage.base_weights:
        cfg["base_weights"] = [str(p) for p in stage.base_weights]
        cfg["base_weights_multiplier"] = [1.0] * len(stage.base_weights)
    return cfg
