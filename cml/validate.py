"""Output validation: what a good LoRA and a good copy machine model look like, not how they were made."""

from __future__ import annotations

import mmap
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cml.families import SD_DENOISER
from cml.safetensors_file import all_finite, as_float32, layout, raw, tensors_f32


class ValidationFailed(Exception):
    pass


@dataclass
class LoraSummary:
    modules: int
    keys: list[str]
    rank: int  # of every module that learned something (resize_lora.py's rank-1 stand-ins left out)
    alpha: float


_KEY = re.compile(r"^(lora_(?:unet|te\d?)_.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _finite_nonzero(a: np.ndarray) -> tuple[bool, bool]:
    return bool(np.isfinite(a).all()), bool(np.any(a != 0))


def validate_lora(path: Path, dim: int, alpha: float, resized: bool = False) -> LoraSummary:
    """A trained LoRA: loads, U-Net keys only, rank = dim, alpha as configured, finite, not all zero.

    resized: made by networks/resize_lora.py, which writes a module that learned nothing (an all-zero
    matrix) at rank 1 with alpha scaled to match (alpha / dim); that module is accepted so.
    """
    if not path.is_file():
        raise ValidationFailed(f"no LoRA file was written ({path})")
    try:
        tensors = tensors_f32(path)
    except Exception as e:
        raise ValidationFailed(f"LoRA file does not load: {e}") from None
    keys = sorted(tensors)
    if not keys:
        raise ValidationFailed("LoRA file holds no tensors")
    modules: dict[str, set[str]] = {}
    for k in keys:
        m = _KEY.match(k)
        if not m:
            raise ValidationFailed(f"unexpected key {k!r} (not a kohya LoRA key)")
        modules.setdefault(m.group(1), set()).add(m.group(2))
    te = [m for m in modules if not m.startswith("lora_unet_")]
    if te:
        raise ValidationFailed(f"{len(te)} text encoder module(s) in a U-Net-only LoRA, e.g. {te[0]}")
    any_up_nonzero = False
    shapes: Counter = Counter()
    for name, parts in modules.items():
        if parts != {"lora_down.weight", "lora_up.weight", "alpha"}:
            raise ValidationFailed(f"module {name} is incomplete: has {sorted(parts)}")
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        a = float(tensors[f"{name}.alpha"].reshape(-1)[0])
        if resized and dim > 1 and down.shape[0] == up.shape[1] == 1 and not _finite_nonzero(up)[1] and abs(a - alpha / dim) <= 1e-3 * max(1.0, alpha):
            continue  # resize_lora.py's rank-1 stand-in for an all-zero module
        if down.shape[0] != dim or up.shape[1] != dim:
            raise ValidationFailed(f"module {name} has rank {down.shape[0]}, expected dim {dim}")
        if abs(a - alpha) > 1e-3 * max(1.0, alpha):
            raise ValidationFailed(f"module {name} has alpha {a}, expected {alpha}")
        for t, what in ((down, "lora_down"), (up, "lora_up")):
            if not _finite_nonzero(t)[0]:
                raise ValidationFailed(f"module {name} {what} holds NaN or Inf (training diverged; lower the learning rate or use fp32)")
        any_up_nonzero = any_up_nonzero or _finite_nonzero(up)[1]
        shapes[(int(down.shape[0]), a)] += 1
    if not any_up_nonzero:
        raise ValidationFailed("all lora_up weights are zero: the LoRA learned nothing")
    (rank, a), _ = shapes.most_common(1)[0]
    return LoraSummary(len(modules), keys, rank, a)


def _compare(k: str, im: dict, ib: dict, mm: mmap.mmap, om: int, mb: mmap.mmap, ob: int) -> tuple[str | None, bool]:
    """(problem, differs) for one tensor of the merged model against the base."""
    if im["shape"] != ib["shape"]:
        return f"{k}: shape {im['shape']} differs from the base's {ib['shape']}", True
    a, b = raw(mm, im, om), raw(mb, ib, ob)
    if im["dtype"] == ib["dtype"]:
        differs = not np.array_equal(a, b)  # byte-exact: the usual case (an fp16 base saved as fp16)
    else:  # a dtype round trip (e.g. fp32 base saved as fp16) is not a change
        a32, b32 = as_float32(a, im["dtype"]), as_float32(b, ib["dtype"])
        differs = bool(np.any(np.abs(a32 - b32) > 1e-3 * (1 + np.abs(b32))))
    if differs and not all_finite(a, im["dtype"]):
        return f"{k} holds NaN or Inf after merging", True
    return None, differs


def validate_copy_machine(merged: Path, base: Path, prefix: str = SD_DENOISER) -> dict:
    """The copy machine model: loads, holds the base's denoiser keys (those under ``prefix``: the U-Net's or the
    DiT's), differs from the base in them only, and in at least one of them (else the copy LoRA was not merged).

    Tensors are compared in place through memory maps (two checkpoints of gigabytes, no copies).
    """
    what = "U-Net" if prefix == SD_DENOISER else "DiT"
    if not merged.is_file():
        raise ValidationFailed(f"no merged checkpoint was written ({merged})")
    try:
        hm, om = layout(merged)
        hb, ob = layout(base)
    except Exception as e:
        raise ValidationFailed(f"merged checkpoint does not load: {e}") from None
    mk, bk = set(hm), set(hb)
    missing = {k for k in bk if k.startswith(prefix)} - mk
    if missing:
        raise ValidationFailed(f"merged checkpoint lacks {len(missing)} {what} key(s) of the base, e.g. {sorted(missing)[0]}")
    changed_unet, problem = 0, None
    with (
        open(merged, "rb") as fm,
        open(base, "rb") as fb,
        mmap.mmap(fm.fileno(), 0, access=mmap.ACCESS_READ) as mm,
        mmap.mmap(fb.fileno(), 0, access=mmap.ACCESS_READ) as mb,
    ):
        for k in sorted(mk & bk):
            problem, differs = _compare(k, hm[k], hb[k], mm, om, mb, ob)
            if problem:
                break  # raised below: no array view may outlive the maps
            if k.startswith(prefix):
                changed_unet += differs
            elif differs:
                problem = f"{k} (not {what}) differs from the base: the merge touched more than the {what}"
                break
    if problem:
        raise ValidationFailed(problem)
    if changed_unet == 0:
        raise ValidationFailed(f"no {what} weight differs from the base: the copy LoRA was not merged (a merge that matched none of its keys)")
    return {"unet_tensors_changed": changed_unet, "keys": len(mk)}


COMFY_KEY = re.compile(r"^diffusion_model\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$")


def validate_comfy_lora(path: Path, source: Path) -> int:
    """A LoRA converted for ComfyUI (sd-scripts' convert_*_lora_to_comfy.py): loads, finite, every key ComfyUI's
    diffusion_model.<module>.lora_A/lora_B/alpha, and as many modules as the LoRA it was made from."""
    try:
        tensors = tensors_f32(path)
    except Exception as e:
        raise ValidationFailed(f"converted LoRA does not load: {e}") from None
    modules: set[str] = set()
    for k, v in tensors.items():
        m = COMFY_KEY.match(k)
        if not m:
            raise ValidationFailed(f"unexpected key {k!r} (not ComfyUI's diffusion_model.<module>.lora_A/lora_B/alpha)")
        if not np.isfinite(v).all():
            raise ValidationFailed(f"{k} holds NaN or Inf")
        modules.add(m.group(1))
    expected = {k.rsplit(".", 2)[0] for k in tensors_f32(source) if k.endswith(".lora_down.weight")}
    if len(modules) != len(expected):
        raise ValidationFailed(f"{len(modules)} modules, where the LoRA it was made from has {len(expected)}")
    return len(modules)
