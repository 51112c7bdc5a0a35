"""Which modules of an sd-scripts LoRA ComfyUI's own loader applies to a model, read from its code.

ComfyUI (comfyanonymous/ComfyUI, comfy/lora.py `model_lora_keys_unet`, the same in every version the project has
read) maps the diffusion model's weights to LoRA names: for each model key ``diffusion_model.<k>.weight`` the name
``lora_unet_<k with "." -> "_">``; `load_lora` then applies ``<name>.lora_up.weight`` / ``.lora_down.weight`` /
``.alpha`` and warns "lora key not loaded" for every key it did not use. ComfyUI's FLUX.1 and SD3 models keep the
checkpoint's DiT names under ``diffusion_model.`` (a file's ``model.diffusion_model.`` keys lose the ``model.``, a
bare DiT file's gain the prefix), so the names come from the base file's own keys.
"""

from __future__ import annotations

from pathlib import Path

from cml.safetensors_file import header_of


def comfy_unet_names(base: Path) -> dict[str, tuple[str, list[int]]]:
    """LoRA name -> (ComfyUI model key, weight shape) for a FLUX.1 / SD3 base file."""
    header, _ = header_of(base)
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or not k.endswith(".weight"):
            continue
        if k.startswith("model.diffusion_model."):
            key = k.removeprefix("model.")
        elif k.startswith(("first_stage_model.", "text_encoders.", "cond_stage_model.", "conditioner.")):
            continue
        else:
            key = "diffusion_model." + k
        out["lora_unet_" + key.removeprefix("diffusion_model.").removesuffix(".weight").replace(".", "_")] = (key, v["shape"])
    return out


def not_loaded(lora: Path, base: Path) -> list[str]:
    """The LoRA's keys ComfyUI would not load on this base: no model weight of that name, or of another shape."""
    header, _ = header_of(lora)
    names = comfy_unet_names(base)
    bad = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        name, _, part = k.partition(".")
        if name not in names:
            bad.append(k)
            continue
        shape = names[name][1]
        if part == "lora_up.weight" and v["shape"][0] != shape[0]:
            bad.append(f"{k}: {v['shape']} against {shape}")
        if part == "lora_down.weight" and v["shape"][1] != shape[1]:
            bad.append(f"{k}: {v['shape']} against {shape}")
    return bad
