"""Output validation and provenance metadata. Knows what a good output looks like, not how it was made."""

from __future__ import annotations

import json
import mmap
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from cml.model_files import UNET_PREFIX
from cml.safetensors_file import all_finite, as_float32, layout, raw


class ValidationFailed(Exception):
    pass


@dataclass
class LoraSummary:
    modules: int
    keys: list[str]
    rank: int
    alpha: float


_KEY = re.compile(r"^(lora_(?:unet|te\d?)_.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _finite_nonzero(a: np.ndarray) -> tuple[bool, bool]:
    a = a.astype(np.float32, copy=False)
    return bool(np.isfinite(a).all()), bool(np.any(a != 0))


def _load(path: Path) -> tuple[dict, str]:
    """All tensors of a (small) LoRA file as numpy arrays; torch only for dtypes numpy lacks (bf16).

    cml's own process stays free of torch: it sits beside trainers that need every GiB (SDXL on 24 GiB).
    """
    from safetensors.numpy import load_file

    try:
        return load_file(str(path)), "numpy"
    except (TypeError, ValueError, KeyError):
        from safetensors.torch import load_file as load_pt

        return {k: v.float().numpy() for k, v in load_pt(str(path)).items()}, "pt"


def validate_lora(path: Path, dim: int, alpha: float, resized: bool = False) -> LoraSummary:
    """A trained LoRA: loads, U-Net keys only, rank = dim, alpha as configured, finite, not all zero.

    resized: made by networks/resize_lora.py, which writes a module that learned nothing (an all-zero
    matrix) at rank 1 with alpha scaled to match (alpha / dim); that module is accepted so.
    """
    if not path.is_file():
        raise ValidationFailed(f"no LoRA file was written ({path})")
    try:
        tensors, _ = _load(path)
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
    for name, parts in modules.items():
        if parts != {"lora_down.weight", "lora_up.weight", "alpha"}:
            raise ValidationFailed(f"module {name} is incomplete: has {sorted(parts)}")
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        a = float(np.asarray(tensors[f"{name}.alpha"], dtype=np.float32).reshape(-1)[0])
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
    if not any_up_nonzero:
        raise ValidationFailed("all lora_up weights are zero: the LoRA learned nothing")
    return LoraSummary(len(modules), keys, int(down.shape[0]), a)  # as read from the file (the last module checked)


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


def validate_copy_machine(merged: Path, base: Path) -> dict:
    """The copy machine model: loads, same U-Net keys as the base, differs from it in U-Net weights only.

    Tensors are compared in place through memory maps (two checkpoints of gigabytes, no copies).
    """
    if not merged.is_file():
        raise ValidationFailed(f"no merged checkpoint was written ({merged})")
    try:
        hm, om = layout(merged)
        hb, ob = layout(base)
    except Exception as e:
        raise ValidationFailed(f"merged checkpoint does not load: {e}") from None
    mk, bk = set(hm), set(hb)
    missing = {k for k in bk if k.startswith(UNET_PREFIX)} - mk
    if missing:
        raise ValidationFailed(f"merged checkpoint lacks {len(missing)} U-Net key(s) of the base, e.g. {sorted(missing)[0]}")
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
            if k.startswith(UNET_PREFIX):
                changed_unet += differs
            elif differs:
                problem = f"{k} (not U-Net) differs from the base: the merge touched more than the U-Net"
                break
    if problem:
        raise ValidationFailed(problem)
    if changed_unet == 0:
        raise ValidationFailed("no U-Net weight differs from the base: the copy LoRA was not merged")
    return {"unet_tensors_changed": changed_unet, "keys": len(mk)}


def dropped_markers(base: Path, merged: Path, keys: tuple[str, ...]) -> list[str]:
    """The base's marker keys (``v_pred``, ``ztsnr``) that the merged file lacks."""
    hb, _ = layout(base)
    hm, _ = layout(merged)
    return [k for k in keys if k in hb and k not in hm]


def carry_marker_keys(base: Path, merged: Path, dst: Path, missing: list[str]) -> None:
    """Write ``merged`` to ``dst`` with the base's marker tensors ``missing`` appended.

    Header-level: the merged file's tensor bytes are copied as they are and the markers appended, so a
    checkpoint of gigabytes is never loaded.
    """
    hb, ob = layout(base)
    with open(merged, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    blobs = []
    with open(base, "rb") as fb:
        for k in missing:
            s, e = hb[k]["data_offsets"]
            fb.seek(ob + s)
            blobs.append(fb.read(e - s))
            header[k] = {"dtype": hb[k]["dtype"], "shape": hb[k]["shape"], "data_offsets": [end, end + (e - s)]}
            end += e - s
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    with open(merged, "rb") as src, open(dst, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        src.seek(8 + n)
        shutil.copyfileobj(src, out, 1 << 24)
        for b in blobs:
            out.write(b)


def add_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Copy a LoRA to ``dst`` with ``extra`` added to sd-scripts' metadata (ss_* keys kept, tensors unchanged)."""
    meta = read_metadata(src)
    meta.update({k: str(v) for k, v in extra.items()})
    tensors, framework = _load(src)
    if framework == "numpy":
        from safetensors.numpy import save_file as save_numpy

        save_numpy(tensors, str(dst), metadata=meta)
    else:  # bf16: keep the file's dtypes
        from safetensors.torch import load_file
        from safetensors.torch import save_file as save_torch

        save_torch(load_file(str(src)), str(dst), metadata=meta)


def read_metadata(path: Path) -> dict[str, str]:
    # "pt" would import torch (~1 s) just to read a header
    with safe_open(str(path), framework="numpy") as f:  # type: ignore[attr-defined]  # a context manager; its stub says not
        return dict(f.metadata() or {})
