"""Output validation and provenance metadata. Knows what a good output looks like, not how it was made."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from cml.checkpoint import UNET_PREFIX


class CheckFailed(Exception):
    pass


@dataclass
class LoraSummary:
    modules: int
    keys: list[str]
    rank: int
    alpha: float


_KEY = re.compile(r"^(lora_(?:unet|te\d?)_.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _finite_nonzero(t: torch.Tensor) -> tuple[bool, bool]:
    a = t.float()
    return bool(torch.isfinite(a).all()), bool(torch.any(a != 0))


def check_lora(path: Path, dim: int, alpha: float, unet_only: bool = True) -> LoraSummary:
    """A trained LoRA: loads, U-Net keys only, rank = dim, alpha as configured, finite, not all zero."""
    if not path.is_file():
        raise CheckFailed(f"no LoRA file was written ({path})")
    try:
        f = safe_open(str(path), framework="pt")
    except Exception as e:
        raise CheckFailed(f"LoRA file does not load: {e}") from None
    with f:
        keys = sorted(f.keys())
        if not keys:
            raise CheckFailed("LoRA file holds no tensors")
        modules: dict[str, set[str]] = {}
        for k in keys:
            m = _KEY.match(k)
            if not m:
                raise CheckFailed(f"unexpected key {k!r} (not a kohya LoRA key)")
            modules.setdefault(m.group(1), set()).add(m.group(2))
        if unet_only:
            te = [m for m in modules if not m.startswith("lora_unet_")]
            if te:
                raise CheckFailed(f"{len(te)} text encoder module(s) in a U-Net-only LoRA, e.g. {te[0]}")
        any_up_nonzero = False
        for name, parts in modules.items():
            if parts != {"lora_down.weight", "lora_up.weight", "alpha"}:
                raise CheckFailed(f"module {name} is incomplete: has {sorted(parts)}")
            down = f.get_tensor(f"{name}.lora_down.weight")
            up = f.get_tensor(f"{name}.lora_up.weight")
            a = float(f.get_tensor(f"{name}.alpha").float().reshape(-1)[0])
            if down.shape[0] != dim or up.shape[1] != dim:
                raise CheckFailed(f"module {name} has rank {down.shape[0]}, expected dim {dim}")
            if abs(a - alpha) > 1e-3 * max(1.0, alpha):
                raise CheckFailed(f"module {name} has alpha {a}, expected {alpha}")
            for t, what in ((down, "lora_down"), (up, "lora_up")):
                finite, _ = _finite_nonzero(t)
                if not finite:
                    raise CheckFailed(f"module {name} {what} holds NaN or Inf (training diverged; lower the learning rate or use fp32)")
            any_up_nonzero = any_up_nonzero or _finite_nonzero(up)[1]
        if not any_up_nonzero:
            raise CheckFailed("all lora_up weights are zero: the LoRA learned nothing")
    return LoraSummary(len(modules), keys, dim, alpha)


def check_merged(merged: Path, base: Path) -> dict:
    """The copy machine model: loads, same U-Net keys as the base, differs from it in U-Net weights only."""
    if not merged.is_file():
        raise CheckFailed(f"no merged checkpoint was written ({merged})")
    try:
        fm = safe_open(str(merged), framework="pt")
        fb = safe_open(str(base), framework="pt")
    except Exception as e:
        raise CheckFailed(f"merged checkpoint does not load: {e}") from None
    with fm, fb:
        mk, bk = set(fm.keys()), set(fb.keys())
        unet_b = {k for k in bk if k.startswith(UNET_PREFIX)}
        missing = unet_b - mk
        if missing:
            raise CheckFailed(f"merged checkpoint lacks {len(missing)} U-Net key(s) of the base, e.g. {sorted(missing)[0]}")
        changed_unet = changed_other = 0
        for k in sorted(mk & bk):
            a, b = fm.get_tensor(k), fb.get_tensor(k)
            if a.shape != b.shape:
                raise CheckFailed(f"{k}: shape {a.shape} differs from the base's {b.shape}")
            if a.dtype == b.dtype:
                differs = not torch.equal(a, b)  # exact and fast: the usual case (an fp16 base saved as fp16)
            else:  # a dtype round trip (e.g. fp32 base saved as fp16) is not a change
                a32, b32 = a.float(), b.float()
                differs = bool(torch.any((a32 - b32).abs() > 1e-3 * (1 + b32.abs())))
            if differs and a.is_floating_point() and not torch.isfinite(a).all():
                raise CheckFailed(f"{k} holds NaN or Inf after merging")
            if k.startswith(UNET_PREFIX):
                changed_unet += differs
            else:
                changed_other += differs
                if differs:
                    raise CheckFailed(f"{k} (not U-Net) differs from the base: the merge touched more than the U-Net")
        if changed_unet == 0:
            raise CheckFailed("no U-Net weight differs from the base: the copy LoRA was not merged")
    return {"unet_tensors_changed": changed_unet, "keys": len(mk)}


def add_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Copy a LoRA to ``dst`` with ``extra`` added to sd-scripts' metadata (ss_* keys kept)."""
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update({k: str(v) for k, v in extra.items()})
    save_file(tensors, str(dst), metadata=meta)


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
