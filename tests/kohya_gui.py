"""gui.json -> the sd-scripts options the kohya_ss GUI builds from it, the way its command builder does.

Read from bmaltais/kohya_ss at commit 45088f04af78e11cec5407ff4652ea3ed2c14422:
- kohya_gui/lora_gui.py `train_model` builds `config_toml_data` (a TOML passed as `--config_file`), then drops every
  value in ("", False, None) (0 and 0.0 too: they compare equal to False), and sets `max_data_loader_n_workers`;
- common_gui.py `run_cmd_advanced_training` appends `additional_parameters`: double quotes stripped, split on
  whitespace, each piece `shlex.quote`d, run without a shell (a quoted piece keeps its quotes);
- the widgets' defaults (class_basic_training.py, class_advanced_training.py, class_folders.py) stand in for keys a
  gui.json leaves out.

TABLE: gui.json key -> (sd-scripts option, conversion). GUI_DEFAULTS: keys cml's gui.json does not write and what
the GUI then emits (none of them changes the run; tests/sdscripts/test_gui.py checks that against the parser).
Modelled: the "Standard" LoRA type with the SD1/SD2/SDXL/SD3 boxes (SD3: networks.lora_sd3), and "Flux1" with the
FLUX.1 box (networks.lora_flux): all cml writes. FLUX_DEFAULTS / SD3_DEFAULTS: what the GUI emits for that family's
widgets cml leaves alone (class_flux1.py, class_sd3.py), after the GUI's own filter.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

Conv = Callable[[Any, dict], Any]


def same(v, g):
    return v


def nonzero(v, g):
    return v if v != 0 else None


def unet_lr(v, g):
    return float(v) if float(v) != 0.0 else None


def text_encoder_lr(v, g):  # [te, te] when > 0, else left out; U-Net only then follows from unet_lr > 0
    return [float(v), float(v)] if float(v) > 0 else None


def warmup_steps(v, g):
    """lr_warmup_steps as the GUI makes it: Load config reads lr_warmup as a whole percent (common_gui.update_my_data:
    int(), so 0.6 becomes 0); in train_model an lr_warmup_steps above 0 wins as it is (resolve_lr_warmup_steps),
    else the percent of max_train_steps, rounded."""
    pct = int(g.get("lr_warmup", 0) or 0)
    steps = int(float(g.get("lr_warmup_steps", 0) or 0))
    if steps > 0:
        return steps
    return round(pct * int(g["max_train_steps"]) / 100) if pct else 0


def v_parameterization(v, g):
    """The model-family change event (class_source_model.toggle_checkboxes) unticks v-parameterization when neither
    v2 nor SDXL is ticked: an SD1 v-prediction model needs --v_parameterization in additional parameters."""
    return bool(v) and bool(g.get("v2") or g.get("sdxl"))


def sdpa(v, g):
    return True if v == "sdpa" else None


def xformers(v, g):
    return True if v == "xformers" else None


def sdxl_only(v, g):
    return True if g.get("sdxl") and v else None


def flux(v, g):
    return v if g.get("flux1_checkbox") else None


def sd3(v, g):
    return v if g.get("sd3_checkbox") else None


def network_module(v, g):
    """lora_gui.py: "Flux1" -> networks.lora_flux; "Standard" -> networks.lora_sd3 with the SD3 box, else networks.lora."""
    if v == "Flux1":
        return "networks.lora_flux"
    assert v == "Standard", v
    return "networks.lora_sd3" if g.get("sd3_checkbox") else "networks.lora"


def script(g: dict) -> str:
    """The trainer the GUI starts (lora_gui.py: sdxl, then flux1, then sd3, else train_network)."""
    if g.get("sdxl"):
        return "sdxl_train_network"
    if g.get("flux1_checkbox"):
        return "flux_train_network"
    if g.get("sd3_checkbox"):
        return "sd3_train_network"
    return "train_network"


TABLE: dict[str, tuple[str | None, Conv]] = {
    "LoRA_type": ("network_module", network_module),
    "pretrained_model_name_or_path": ("pretrained_model_name_or_path", same),
    "v2": ("v2", same),
    "v_parameterization": ("v_parameterization", v_parameterization),
    "sdxl": (None, same),  # picks sdxl_train_network.py
    "flux1_checkbox": (None, same),  # picks flux_train_network.py (see script)
    "sd3_checkbox": (None, same),  # picks sd3_train_network.py
    # FLUX.1 fields (config_toml_data: each only with the FLUX.1 box ticked)
    "ae": ("ae", flux),
    "clip_l": ("clip_l", flux),  # the SD3 box takes sd3_clip_l instead
    "t5xxl": ("t5xxl", flux),
    "timestep_sampling": ("timestep_sampling", flux),
    "discrete_flow_shift": ("discrete_flow_shift", lambda v, g: float(v) if g.get("flux1_checkbox") else None),
    "model_prediction_type": ("model_prediction_type", flux),
    "guidance_scale": ("guidance_scale", lambda v, g: float(v) if g.get("flux1_checkbox") else None),
    "t5xxl_max_token_length": ("t5xxl_max_token_length", lambda v, g: int(v) if g.get("flux1_checkbox") else None),
    "apply_t5_attn_mask": ("apply_t5_attn_mask", flux),
    "flux1_cache_text_encoder_outputs": (None, same),  # -> cache_text_encoder_outputs (see gui_to_options)
    # SD3 fields
    "sd3_clip_l": ("clip_l", sd3),
    "clip_g": ("clip_g", sd3),
    "sd3_t5xxl": ("t5xxl", sd3),
    "vae": ("vae", same),
    "weighting_scheme": ("weighting_scheme", sd3),
    "sd3_cache_text_encoder_outputs": (None, same),
    "dataset_config": ("dataset_config", same),
    "output_dir": ("output_dir", same),
    "output_name": ("output_name", same),
    "save_model_as": ("save_model_as", same),
    "save_precision": ("save_precision", same),
    "save_every_n_epochs": ("save_every_n_epochs", nonzero),
    "save_every_n_steps": ("save_every_n_steps", nonzero),
    "network_dim": ("network_dim", same),
    "network_alpha": ("network_alpha", same),
    "learning_rate": ("learning_rate", lambda v, g: float(v)),
    "unet_lr": ("unet_lr", unet_lr),
    "text_encoder_lr": ("text_encoder_lr", text_encoder_lr),
    "optimizer": ("optimizer_type", same),
    "lr_scheduler": ("lr_scheduler", same),
    "lr_warmup": (None, same),  # read with lr_warmup_steps, see warmup_steps
    "lr_warmup_steps": ("lr_warmup_steps", warmup_steps),
    "max_train_steps": ("max_train_steps", lambda v, g: int(v) if int(v) != 0 else None),
    "max_train_epochs": ("max_train_epochs", lambda v, g: int(v) if int(v) != 0 else None),
    "epoch": ("epoch", lambda v, g: int(v)),  # not an sd-scripts option: ignored by it
    "train_batch_size": ("train_batch_size", same),  # the dataset TOML's batch_size wins
    "seed": ("seed", lambda v, g: int(v) if int(v) != 0 else None),
    "mixed_precision": ("mixed_precision", same),
    "xformers": ("sdpa", sdpa),  # and "xformers" -> xformers = true (see gui_to_options)
    "sdxl_no_half_vae": ("no_half_vae", sdxl_only),
    "gradient_checkpointing": ("gradient_checkpointing", same),
    "cache_latents": ("cache_latents", same),
    "caption_extension": ("caption_extension", same),
    "enable_bucket": ("enable_bucket", same),
    "max_resolution": ("resolution", same),  # the dataset TOML's resolution wins
    "sdxl_cache_text_encoder_outputs": (None, same),  # -> cache_text_encoder_outputs (see gui_to_options)
    "max_data_loader_n_workers": ("max_data_loader_n_workers", lambda v, g: int(v)),
    "log_with": ("log_with", same),
    "logging_dir": ("logging_dir", same),
    "additional_parameters": (None, same),  # appended to the command line, see gui_to_options
    "dynamo_backend": ("dynamo_backend", same),  # accelerate's field, written into the trainer's TOML too (lora_gui.py)
}

# Widget defaults of keys cml does not write, and what the builder emits for them (options that sd-scripts
# already defaults to the same effect, or dataset keys that the dataset TOML overrides).
GUI_DEFAULTS: dict[str, tuple[str, Any]] = {
    "clip_skip": ("clip_skip", 1),  # 1 = the last layer, sd-scripts' default (None)
    "max_token_length": ("max_token_length", 75),  # 75 (+2) = the tokenizer's 77, sd-scripts' default (None)
    "loss_type": ("loss_type", "l2"),
    "huber_c": ("huber_c", 0.1),
    "huber_scale": ("huber_scale", 1.0),
    "huber_schedule": ("huber_schedule", "snr"),
    "max_grad_norm": ("max_grad_norm", 1.0),
    "prior_loss_weight": ("prior_loss_weight", 1.0),
    "lr_scheduler_num_cycles": ("lr_scheduler_num_cycles", 1),  # int(epoch)
    "lr_scheduler_power": ("lr_scheduler_power", 1),
    "min_bucket_reso": ("min_bucket_reso", 256),  # dataset TOML wins
    "max_bucket_reso": ("max_bucket_reso", 2048),  # dataset TOML wins
    "bucket_reso_steps": ("bucket_reso_steps", 64),  # dataset TOML wins
    "noise_offset_type": ("noise_offset_type", "Original"),  # not an sd-scripts option
    "network_args": ("network_args", []),
    "optimizer_args": ("optimizer_args", []),
    "lr_scheduler_args": ("lr_scheduler_args", []),
    "dynamo_backend": ("dynamo_backend", "no"),  # class_accelerate_launch.py's default: sd-scripts then does not compile
}

# What the GUI emits for the widgets of a family's panel that cml's gui.json leaves at their defaults, after the GUI's
# own filter drops False, 0 and "" (class_flux1.py, class_sd3.py; config_toml_data in lora_gui.py).
FLUX_DEFAULTS: dict[str, Any] = {"max_token_length": None}  # lora_gui.py: not emitted with the FLUX.1 box
SD3_DEFAULTS: dict[str, Any] = {
    "logit_std": 1.0,  # sd-scripts' default too
    "mode_scale": 1.29,  # sd-scripts' default too
    "t5xxl_dtype": "bf16",  # sd-scripts: "[DOES NOT WORK] not supported yet" (library/sd3_train_utils.py), read nowhere
    "text_encoder_batch_size": 1,  # the text-encoder caching pass's batch: one caption (none) per cml stage
}

# Options of cml's train.toml that no gui.json key can carry, with what the GUI does instead (run README says so).
NOT_EXPRESSIBLE = {
    "tokenizer_cache_dir": "the GUI's run loads the tokenizer from the Hugging Face hub",
    "network_module": "cml trains with cml.sd_process.lora (networks.lora with the --base_weights fix and an exact, faster forward), the GUI with networks.lora",
    "base_weights_multiplier": "sd-scripts defaults each multiplier to 1.0, which is what cml writes",
}


def loaded_boxes(gui: dict, model_exists: bool, detected: str | None) -> dict[str, bool]:
    """The family boxes after Load config: the GUI detects the family from the model file it names
    (common_gui.set_pretrained_model_name_or_path_input, sd_modeltype.SDModelType: every box unticked for a file that
    is not there), then its change event unticks v-parameterization when v2 and SDXL are both unticked
    (class_source_model.toggle_checkboxes)."""
    boxes = {"v2": detected == "sd2", "sdxl": detected == "sdxl"} if model_exists else {"v2": False, "sdxl": False}
    boxes["v_parameterization"] = bool(gui.get("v_parameterization")) and (boxes["v2"] or boxes["sdxl"])
    return boxes


def gui_to_options(gui: dict) -> tuple[dict, list[str]]:
    """(config TOML data, extra command-line pieces) that the GUI builds from this gui.json."""
    unknown = set(gui) - set(TABLE)
    assert not unknown, f"gui.json keys the table does not model: {sorted(unknown)}"
    cfg: dict[str, Any] = {}
    for option, default in GUI_DEFAULTS.values():
        cfg[option] = default
    for key, value in gui.items():
        option, conv = TABLE[key]
        if option is not None:
            cfg[option] = conv(value, gui)
    if gui.get("flux1_checkbox"):
        cfg.update(FLUX_DEFAULTS)
    if gui.get("sd3_checkbox"):
        cfg.update(SD3_DEFAULTS)
    cfg["cache_text_encoder_outputs"] = (
        True
        if (gui.get("sdxl") and gui.get("sdxl_cache_text_encoder_outputs"))
        or (gui.get("flux1_checkbox") and gui.get("flux1_cache_text_encoder_outputs"))
        or (gui.get("sd3_checkbox") and gui.get("sd3_cache_text_encoder_outputs"))
        else None
    )
    cfg["xformers"] = xformers(gui.get("xformers", "xformers"), gui)
    te = cfg.get("text_encoder_lr") or [0.0]
    cfg["network_train_unet_only"] = float(te[0]) == 0.0 and (cfg.get("unet_lr") or 0.0) > 0
    cfg = {k: v for k, v in cfg.items() if v not in ("", False, None)}  # the GUI's own filter
    cfg["max_data_loader_n_workers"] = int(gui.get("max_data_loader_n_workers", 0))
    extra = [shlex.quote(a) for a in gui.get("additional_parameters", "").replace('"', "").split()]
    return cfg, extra
