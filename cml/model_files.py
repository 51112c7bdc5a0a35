"""Reading model files without loading their weights: family detection, LoRA vs checkpoint, identity."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cml.cache import SHA256
from cml.errors import InputError
from cml.safetensors_file import nonfinite_tensors

# Keys that only one family's single-file checkpoints have.
SDXL_KEYS = ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "model.diffusion_model.label_emb.0.0.weight")
SD2_KEYS = ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "cond_stage_model.model.ln_final.weight")
SD1_KEYS = ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "cond_stage_model.transformer.embeddings.token_embedding.weight")
UNET_PREFIX = "model.diffusion_model."
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# Keys that mark how a checkpoint was trained, not weights: v-prediction (NoobAI-XL v-pred and others; ComfyUI and
# Forge read the model type from `v_pred`) and zero terminal SNR (`ztsnr`). sd-scripts' merge scripts drop them.
MARKER_KEYS = ("v_pred", "ztsnr")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str  # "checkpoint" | "diffusers" | "ckpt"
    family: str | None  # sd1 | sd2 | sdxl; None when it cannot be read without unpickling
    v_parameterization: bool | None  # None: not recorded in the file
    size: int
    dtype: str | None = None  # safetensors dtype of the U-Net weights, e.g. "F16"
    markers: tuple[str, ...] = ()  # MARKER_KEYS the file holds: a copy machine model must keep them


def read_safetensors_header(path: Path) -> tuple[list[str], dict[str, str], str | None]:
    """Keys, metadata and U-Net dtype of a .safetensors file; damaged files become InputError."""
    from safetensors import SafetensorError, safe_open  # type: ignore[attr-defined]  # exported at run time, not in its stub

    try:
        with safe_open(str(path), framework="numpy") as f:  # type: ignore[attr-defined]  # a context manager; its stub says not
            keys = list(f.keys())
            unet = next((k for k in keys if k.startswith(UNET_PREFIX) and k.endswith(".weight")), None)
            dtype = f.get_slice(unet).get_dtype() if unet else None
            return keys, dict(f.metadata() or {}), dtype
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"not a readable safetensors file ({e})", str(path), "re-download the file; it may be truncated") from None


def _family_from_keys(keys: list[str]) -> str | None:
    ks = set(keys)
    if any(k in ks for k in SDXL_KEYS):
        return "sdxl"
    if any(k in ks for k in SD2_KEYS):
        return "sd2"
    if any(k in ks for k in SD1_KEYS):
        return "sd1"
    return None


def _vpred_from_metadata(meta: dict[str, str], keys: list[str]) -> bool | None:
    pt = meta.get("modelspec.prediction_type")
    if pt:
        return pt.lower() in ("v", "v_prediction", "v-prediction")
    if "v_pred" in keys:  # ComfyUI-saved checkpoints mark v-prediction with this key
        return True
    return None


def is_lora_keys(keys: list[str]) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te", "lora_down", "lycoris_")) or ".lora_down." in k for k in keys)


def inspect_model(path: Path, allow_pickle: bool = False, where: str | None = None) -> ModelInfo:
    where = where or f"base_model {path}"
    if not path.exists():
        raise InputError("model not found", where, "set base_model to an SD checkpoint (.safetensors)")
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise InputError("folder is not a diffusers model (no model_index.json)", where, "name a .safetensors checkpoint or a diffusers folder")
        try:
            unet_cfg = json.loads((path / "unet" / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"diffusers folder has no readable unet/config.json ({e})", where, "re-download the model") from None
        cad = unet_cfg.get("cross_attention_dim")
        family = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(cad)
        vpred = None
        try:
            sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
            vpred = sched.get("prediction_type") == "v_prediction"
        except (OSError, json.JSONDecodeError):
            pass
        pickled = [
            d.name
            for d in sorted(path.iterdir())
            if d.is_dir() and any(d.glob("*.bin")) and not any(d.glob("*.safetensors"))  # diffusers loads .safetensors first
        ]
        if pickled and not allow_pickle:
            raise InputError(
                f"the diffusers folder's {', '.join(pickled)} weights are pickled .bin files: loading them can run code hidden in them",
                where,
                "use a copy with .safetensors weights, or set allow_pickle = true if you trust its source",
            )
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return ModelInfo(path, "diffusers", family, vpred, size)
    size = path.stat().st_size
    if size == 0:
        raise InputError("model file is empty", where, "re-download the model")
    suffix = path.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        if not allow_pickle:
            raise InputError(
                f"{suffix} files are Python pickles: loading one can run code hidden in it",
                where,
                "convert it to .safetensors, or set allow_pickle = true if you trust its source",
            )
        return ModelInfo(path, "ckpt", None, None, size)
    if suffix != ".safetensors":
        raise InputError(f"unsupported model file type {suffix or '(none)'}", where, "use a .safetensors (or trusted .ckpt) checkpoint")
    keys, meta, dtype = read_safetensors_header(path)
    if is_lora_keys(keys):
        raise InputError("this is a LoRA, not a checkpoint", where, "set base_model to the SD checkpoint the LoRA was trained on")
    family = _family_from_keys(keys)
    if family is None:
        raise InputError("not a Stable Diffusion checkpoint cml knows (no SD1/SD2/SDXL keys)", where, "use an SD1.x, SD2.x or SDXL single-file checkpoint")
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise InputError("checkpoint holds no U-Net weights", where, "use a full SD checkpoint")
    markers = tuple(k for k in MARKER_KEYS if k in keys)
    return ModelInfo(path, "checkpoint", family, _vpred_from_metadata(meta, keys), size, dtype, markers)


def resolve_family(info: ModelInfo, declared: str) -> str:
    if declared == "auto":
        if info.family is None:
            raise InputError("family cannot be detected from a .ckpt without unpickling it", f"base_model {info.path}", 'set family = "sd1", "sd2" or "sdxl"')
        return info.family
    if info.family is not None and info.family != declared:
        raise InputError(
            f"family is declared {FAMILY_NAMES[declared]} but the checkpoint is {FAMILY_NAMES[info.family]}",
            f"family (base_model {info.path})",
            f'set family = "{info.family}" or "auto"',
        )
    return declared


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _identity(st: os.stat_result) -> list[int]:
    """What says a file is the same file, unchanged: size, mtime, and inode and ctime (a file rewritten in place
    with its size and mtime restored still gets a new ctime; one swapped in by rename, a new inode)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _facts(path: Path) -> dict:
    """Cached facts of a base model file (its sha256; for a checkpoint, its U-Net tensors holding NaN or Inf),
    computed once per file version (cml/cache.py's SHA256): base models are gigabytes and the user's own files. The
    cache drops entries of files that no longer exist, so that removed and temporary files do not pile up."""
    st = path.stat()
    key = str(path.resolve())
    entry = SHA256.get(key)
    if isinstance(entry, dict) and entry.get("identity") == _identity(st) and "sha256" in entry:
        return entry
    entry = {"identity": _identity(st), "sha256": sha256_of(path)}
    if path.suffix.lower() == ".safetensors":
        entry["nonfinite_unet"] = nonfinite_tensors(path, UNET_PREFIX)
    SHA256.put(key, entry, keep=lambda k: Path(k).exists())
    return entry


def known_sha256(paths: list[Path]) -> dict[str, list]:
    """The sha256 cml already knows for these very files (same path, size, mtime, inode and ctime), as the trainer's
    CML_KNOWN_SHA256 takes them (cml/sd_process/patches.py): path -> [size, mtime_ns, inode, ctime_ns, sha256]."""
    out = {}
    for p in paths:
        try:
            key = str(p.resolve())
            entry = SHA256.get(key)
            if isinstance(entry, dict) and entry.get("identity") == _identity(p.stat()):
                out[key] = [*entry["identity"], str(entry["sha256"])]
        except (OSError, KeyError, TypeError):
            pass
    return out


def file_sha256(path: Path) -> str:
    """sha256 of a base model (cached, see _facts)."""
    return str(_facts(path)["sha256"])


def nonfinite_unet_tensors(path: Path) -> list[str]:
    """The U-Net tensors of a .safetensors checkpoint that hold NaN or Inf (cached, see _facts)."""
    return list(_facts(path).get("nonfinite_unet", []))


def model_identity(info: ModelInfo) -> str:
    """What a stage fingerprint needs to know about the base model."""
    if info.kind == "diffusers":
        h = hashlib.sha256()
        for f in sorted(info.path.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(info.path)}|{st.st_size}|{st.st_mtime_ns}".encode())
        return "diffusers:" + h.hexdigest()
    return "sha256:" + file_sha256(info.path)
