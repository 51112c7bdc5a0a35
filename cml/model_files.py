"""Reading model files without loading their weights: family detection, LoRA vs checkpoint, identity."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cml.cache import SHA256
from cml.errors import InputError
from cml.families import DIT, FAMILIES, SD_DENOISER, detect, titles
from cml.safetensors_file import nonfinite_tensors

UNET_PREFIX = SD_DENOISER
# Keys that mark how a checkpoint was trained, not weights: v-prediction (NoobAI-XL v-pred and others; ComfyUI and
# Forge read the model type from `v_pred`) and zero terminal SNR (`ztsnr`). sd-scripts' merge scripts drop them.
MARKER_KEYS = ("v_pred", "ztsnr")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str  # "checkpoint" | "diffusers" | "ckpt"
    family: str | None  # a key of cml/families.py's FAMILIES; None when it cannot be read without unpickling
    v_parameterization: bool | None  # None: not recorded in the file
    size: int
    dtype: str | None = None  # safetensors dtype of the U-Net weights, e.g. "F16"
    markers: tuple[str, ...] = ()  # MARKER_KEYS the file holds: a copy machine model must keep them
    prefixed: bool = False  # a DiT file whose keys carry "model.diffusion_model." (ComfyUI's way) where the family's have none
    variant: str = ""  # FLUX.1: "dev" (it has guidance_in) or "schnell", as sd-scripts' flux_utils.analyze_checkpoint_state tells them
    gui_detected: bool = True  # the kohya GUI's model detection ticks the family's box from this file (Family.gui_detect)


def read_safetensors_header(path: Path, where: str | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor table (name -> dtype, shape) and metadata of a .safetensors file, from its header alone; a file
    that is not one becomes InputError."""
    from cml.safetensors_file import header_of

    try:
        header, start = header_of(path)
        size = path.stat().st_size
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable safetensors file ({e})", where or str(path), "re-download the file; it may be truncated") from None
    meta = header.pop("__metadata__", None) or {}
    end = max((v.get("data_offsets", [0, 0])[1] for v in header.values() if isinstance(v, dict)), default=0)
    if start + end > size:
        raise InputError(
            f"not a readable safetensors file: it is truncated ({size} bytes, its header promises {start + end})", where or str(path), "re-download the file"
        )
    return header, {str(k): str(v) for k, v in meta.items()}


def denoiser_dtype(table: dict[str, dict], prefix: str) -> str | None:
    """The safetensors dtype of the denoiser's (U-Net's or DiT's) first weight, e.g. "F16"."""
    k = next((k for k in table if k.startswith(prefix) and k.endswith(".weight")), None)
    return table[k]["dtype"] if k else None


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
            pipeline = str(json.loads(index.read_text()).get("_class_name", ""))
        except (OSError, ValueError, AttributeError):
            pipeline = ""
        if pipeline and not pipeline.startswith("StableDiffusion") or pipeline.startswith("StableDiffusion3"):
            raise InputError(
                f"a Diffusers folder of a {pipeline}: cml trains that family from single files",
                where,
                "give its transformer (DiT) as one .safetensors file, and the text encoders and autoencoder under [model_files]",
            )
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
    table, meta = read_safetensors_header(path, where)
    keys = list(table)
    if is_lora_keys(keys):
        raise InputError("this is a LoRA, not a checkpoint", where, "set base_model to the checkpoint the LoRA was trained on")
    family = detect(set(keys))
    if family is None:
        raise InputError(f"not a base model of a family cml knows ({titles()})", where, "use a single-file checkpoint (.safetensors) of one of them")
    f = FAMILIES[family]
    prefixed = family in DIT and not f.denoiser_prefix and any(k.startswith(SD_DENOISER) for k in keys)
    prefix = SD_DENOISER if prefixed else f.denoiser_prefix
    if prefix and not any(k.startswith(prefix) for k in keys):
        raise InputError(f"the file holds no {'U-Net' if family not in DIT else 'DiT'} weights", where, f"use a full {f.title} checkpoint")
    markers = tuple(k for k in MARKER_KEYS if k in keys)
    vpred = _vpred_from_metadata(meta, keys) if family not in DIT else None
    dev = any(k.endswith(("guidance_in.in_layer.bias", "time_text_embed.guidance_embedder.linear_1.bias")) for k in keys)
    variant = ("dev" if dev else "schnell") if family == "flux" else ""
    gui_detected = not f.gui_detect or any(k in table for k in f.gui_detect)
    return ModelInfo(path, "checkpoint", family, vpred, size, denoiser_dtype(table, prefix), markers, prefixed, variant, gui_detected)


def resolve_family(info: ModelInfo, declared: str) -> str:
    if declared == "auto":
        if info.family is None:
            raise InputError("family cannot be detected from a .ckpt without unpickling it", f"base_model {info.path}", 'set family = "sd1", "sd2" or "sdxl"')
        return info.family
    if info.family is not None and info.family != declared:
        raise InputError(
            f"family is declared {FAMILIES[declared].title} but the file is {FAMILIES[info.family].title}",
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
    """Cached facts of a base model file (its sha256; for a .safetensors file, its tensors holding NaN or Inf),
    computed once per file version (cml/cache.py's SHA256): base models are gigabytes and the user's own files. The
    cache drops entries of files that no longer exist, so that removed and temporary files do not pile up."""
    st = path.stat()
    key = str(path.resolve())
    entry = SHA256.get(key)
    if isinstance(entry, dict) and entry.get("identity") == _identity(st) and "sha256" in entry:
        return entry
    entry = {"identity": _identity(st), "sha256": sha256_of(path)}
    if path.suffix.lower() == ".safetensors":
        entry["nonfinite"] = nonfinite_tensors(path)
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


def nonfinite_tensors_of(path: Path, prefix: str) -> list[str]:
    """The tensors under ``prefix`` (the denoiser's) of a .safetensors file that hold NaN or Inf (cached, see _facts)."""
    return [k for k in _facts(path).get("nonfinite", []) if k.startswith(prefix)]


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


# What each of [model_files]'s keys must be: a key its file holds, and (for the CLIP encoders) the width of its
# token embedding. What they are when they are something else: a family's base model, a LoRA.
PART_KEYS = {
    "clip_l": ("text_model.encoder.layers.0.self_attn.q_proj.weight", 768, "CLIP-L text encoder"),
    "clip_g": ("text_model.encoder.layers.0.self_attn.q_proj.weight", 1280, "CLIP-G text encoder"),
    "t5xxl": ("encoder.block.0.layer.0.SelfAttention.q.weight", None, "T5-XXL text encoder"),
    "ae": ("decoder.conv_in.weight", None, "autoencoder"),
    "vae": (None, None, "VAE"),
    "qwen3": ("layers.0.self_attn.q_proj.weight", None, "Qwen3 text encoder"),
    "gemma2": (None, None, "Gemma 2 text encoder"),
    "text_encoder": (None, None, "Qwen2.5-VL text encoder"),
    "byt5": (None, None, "byT5 text encoder"),
}


def inspect_part(key: str, path: Path) -> list[str]:
    """What is wrong with a [model_files] file, read from its header (empty when nothing is): one line each."""
    where = f"model_files.{key} {path}"
    need, width, what = PART_KEYS[key]
    if not path.exists():
        return [f"{where}: not found -- give the path of the {what} file"]
    if path.is_dir():
        if key == "qwen3" and (path / "config.json").is_file():
            return []
        return [f"{where}: is a folder -- give the {what} as one .safetensors file" + (" (or a Qwen3 folder with config.json)" if key == "qwen3" else "")]
    if path.suffix.lower() != ".safetensors":
        return [f"{where}: not a .safetensors file -- give the {what} as .safetensors (pickled files can run code)"]
    try:
        table, _ = read_safetensors_header(path, where)
    except InputError as e:
        return [e.line()]
    keys = set(table)
    if is_lora_keys(list(keys)):
        return [f"{where}: this is a LoRA, not the {what} -- give the {what} file"]
    other = detect(keys)
    if other is not None:
        return [f"{where}: this is a {FAMILIES[other].title} base model, not the {what} -- give the {what} file"]
    bare = {k.removeprefix("model.").removeprefix("text_encoders.clip_l.transformer.").removeprefix("text_encoders.clip_g.transformer.") for k in keys}
    if need is not None and need not in bare and need not in keys:
        return [f"{where}: does not hold a {what} (no {need}) -- check which file is which"]
    if width is not None:
        emb = next((v for k, v in table.items() if k.endswith("text_model.embeddings.token_embedding.weight")), None)
        if emb is not None and emb["shape"][-1] != width:
            return [f"{where}: holds a text encoder {emb['shape'][-1]} wide, not the {what} ({width}) -- check which file is which"]
    return []
