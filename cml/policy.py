"""The rules a plan is built by: stage fingerprints, the precision a stage runs in, the optimizer where 8-bit ones
cannot run, the merge's precision."""

from __future__ import annotations

import hashlib
import json

from cml.errors import InputError
from cml.inputs import Inputs
from cml.preset.models import Preset, TrainSettings


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# Training settings added after runs were made with cml 0.1: at their default they leave a stage's fingerprint as it
# was, so a finished run stays up to date after cml is upgraded; set otherwise, they are part of it.
LATER_SETTINGS: dict[str, object] = {"torch_compile": False}


def settings_id(settings: TrainSettings) -> dict:
    """A stage's training settings as its fingerprint holds them."""
    d = settings.model_dump()
    for key, default in LATER_SETTINGS.items():
        if d.get(key) == default:
            del d[key]
    return d


def resolve_precision(requested: str, inputs: Inputs) -> str:
    """The one precision rule: fp32 | fp16 | bf16 as the stage will run on this device.

    auto: bf16 on GPUs that run it natively (compute capability 8.0+: the fp32 exponent range, so no loss
    scaling and no fp16 overflow), fp16 on older GPUs (half the memory of fp32, tensor cores), fp32 on a
    CPU (no half-precision speed-up there, and fp16 matmuls are slow or missing).
    """
    gpu = inputs.gpu
    if requested == "auto":
        if inputs.device != "cuda":
            return "fp32"
        return "bf16" if gpu is not None and gpu.bf16 else "fp16"
    if requested == "bf16" and gpu is not None and not gpu.bf16:
        raise InputError(
            f'precision = "bf16" but {gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}) has no native bf16',
            "train.precision",
            'use precision = "auto" or "fp16" on GPUs older than compute capability 8.0',
        )
    return requested


def _is_8bit(optimizer: str) -> bool:
    o = optimizer.lower()
    return "8bit" in o or o.startswith("paged")


def effective_settings(s: TrainSettings, inputs: Inputs) -> tuple[TrainSettings, list[str]]:
    """Settings as they will run on this device: precision resolved, 8-bit optimizers only where one step worked."""
    notes = []
    update: dict = {"precision": resolve_precision(s.precision, inputs)}
    if s.gradient_checkpointing is None:
        update["gradient_checkpointing"] = inputs.family != "sd1" and inputs.family != "sd2"  # SDXL and the DiT families: sd-scripts recommends it
    opt = s.optimizer
    if _is_8bit(opt):
        gpu = inputs.gpu
        why = None
        if inputs.device != "cuda" or gpu is None:
            why = f"bitsandbytes needs a CUDA GPU ({inputs.device} here)"
        elif gpu.bnb_error:
            why = f"one AdamW8bit step failed on {gpu.name}: {gpu.bnb_error}"
        if why:
            fallback = opt.replace("Paged", "").replace("8bit", "").replace("32bit", "") or "AdamW"
            if fallback.lower() not in ("adamw", "lion", "sgdnesterov"):
                fallback = "AdamW"
            notes.append(f"{opt} cannot run here ({why}): using {fallback} instead (same update rule, 32-bit state: more memory)")
            update["optimizer"] = fallback
    return s.model_copy(update=update), notes


def merge_precision(preset: Preset, inputs: Inputs) -> str:
    if preset.merge_precision != "auto":
        return preset.merge_precision
    return "fp16" if inputs.family == "sdxl" else "float"
