"""Toy model files of the DiT families, for the tests (run in sd-scripts' Python):

    python -m cml.sd_process.toy_models flux|flux-schnell|flux-full|sd3|anima OUT_DIR

No real weights can be downloaded here. Each toy is built with sd-scripts' own model classes and loaders, so its
keys and shapes are what sd-scripts reads:
- the denoiser (DiT) with random weights (std 0.02; Anima's in fp32, the loader keeps the file's dtype), at the smallest size its loader accepts where the loader
  reads the size from the file (FLUX.1: 1 double and 1 single block; SD3: an MMDiT of depth 1), else at the
  loader's fixed size (Anima's 2.1B DiT);
- the autoencoder with random weights;
- text encoders as sparse all-zero safetensors files (a header and a hole: a few KiB on disk) at the sizes the
  loaders fix (T5-XXL's 4.8B parameters), except Anima's Qwen3, given as a folder whose config the loader reads:
  one layer. All-zero encoders give all-zero embeddings: enough for the denoiser and its LoRA to train.

Every file is written whole under a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

DTYPES = {"torch.bfloat16": ("BF16", 2), "torch.float16": ("F16", 2), "torch.float32": ("F32", 4)}


def _final(path: Path):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    return tmp, lambda: os.replace(tmp, path)


def sparse_zeros(path: Path, shapes: dict[str, tuple[list[int], str]], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of all-zero tensors (name -> (shape, dtype "BF16" ...)), its data a hole in the file."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (shape, dtype) in shapes.items():
        n = 1
        for s in shape:
            n *= s
        size = n * {"BF16": 2, "F16": 2, "F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp, done = _final(path)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)
    done()


def shapes_of(model, dtype: str = "BF16") -> dict[str, tuple[list[int], str]]:
    """The float tensors of ``model``'s state dict (integer buffers such as position ids are the model's own)."""
    return {k: (list(v.shape), dtype) for k, v in model.state_dict().items() if v.is_floating_point()}


def random_file(path: Path, model, dtype, prefix: str = "", skip: tuple[str, ...] = (), metadata: dict[str, str] | None = None) -> None:
    """``model``'s parameters as random tensors (std 0.02; norms at 1, biases at 0) in ``dtype``, built one at a time
    (the model may be on the meta device), saved under ``prefix``."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        if any(s in k for s in skip):
            continue
        if k.endswith(".bias") or v.ndim == 0:
            t = torch.zeros(v.shape, dtype=dtype)
        elif "norm" in k or k.endswith(".scale"):
            t = torch.ones(v.shape, dtype=dtype)
        else:
            t = (torch.randn(v.shape, generator=g) * 0.02).to(dtype)
        sd[prefix + k] = t
    tmp, done = _final(path)
    save_file(sd, str(tmp), metadata)
    done()


def clip_l_shapes() -> dict:
    from library import flux_utils

    return shapes_of(flux_utils.load_clip_l(None, None, "meta", state_dict={}))


def t5xxl_shapes() -> dict:
    from library import flux_utils

    return shapes_of(flux_utils.load_t5xxl(None, None, "meta", state_dict={}))


def build_flux(out: Path, schnell: bool = False, full: bool = False) -> None:
    """FLUX.1 dev (or schnell: no guidance_in) with 1 double and 1 single block (0.55B; ``full``: FLUX.1's own 19 and
    38, 12B, for make bench-gpu), its AE, CLIP-L and T5-XXL."""
    from dataclasses import replace

    import torch
    from library import flux_models

    with torch.device("meta"):
        params = flux_models.configs["schnell" if schnell else "dev"].params
        if not full:
            params = replace(params, depth=1, depth_single_blocks=1)
        dit = flux_models.Flux(params)
        ae = flux_models.AutoEncoder(flux_models.configs["dev"].ae_params)
    random_file(out / "flux.safetensors", dit, torch.bfloat16, skip=("guidance_in.",) if schnell else ())
    random_file(out / "ae.safetensors", ae, torch.float32)
    sparse_zeros(out / "clip_l.safetensors", clip_l_shapes())
    sparse_zeros(out / "t5xxl.safetensors", t5xxl_shapes())


def build_sd3(out: Path) -> None:
    """SD3 with an MMDiT of depth 1 (its size read from the file) and an SD3 VAE in one checkpoint; CLIP-L, CLIP-G and
    T5-XXL beside it."""
    import torch
    from library import sd3_models, sd3_utils

    params = sd3_models.SD3Params(
        patch_size=2, depth=1, num_patches=36864, pos_embed_max_size=192, adm_in_channels=2048, qk_norm=None,
        x_block_self_attn_layers=[], context_embedder_in_features=4096, context_embedder_out_features=64, model_type="medium",
    )  # fmt: skip
    with torch.device("meta"):
        mmdit = sd3_models.create_sd3_mmdit(params, "torch")
        vae = sd3_models.SDVAE(torch.float32, "meta")
    import safetensors.torch

    g = torch.Generator().manual_seed(0)
    sd = {}
    for prefix, model in (("model.diffusion_model.", mmdit), ("first_stage_model.", vae)):
        for k, v in model.state_dict().items():
            t = torch.zeros(v.shape) if (k.endswith(".bias") or v.ndim < 2) else torch.randn(v.shape, generator=g) * 0.02
            if ("norm" in k and k.endswith(".weight")) or k.endswith(".scale"):
                t = torch.ones(v.shape)
            sd[prefix + k] = t.to(torch.float16)
    sd["model.diffusion_model.pos_embed"] = torch.zeros(1, 36864, 64, dtype=torch.float16)
    tmp, done = _final(out / "sd3.safetensors")
    safetensors.torch.save_file(sd, str(tmp))
    done()
    for name, loader in (("clip_l", sd3_utils.load_clip_l), ("clip_g", sd3_utils.load_clip_g)):
        model = built_by(sd3_utils, "CLIPTextModelWithProjection", lambda loader=loader: loader("-", None, "cpu"))
        sparse_zeros(out / f"{name}.safetensors", shapes_of(model, "F16"))
    sparse_zeros(out / "t5xxl.safetensors", t5xxl_shapes())


class _Built(Exception):
    pass


def built_by(module, cls_name: str, call) -> object:
    """The model sd-scripts' loader ``call`` builds of ``module.cls_name``, with its own fixed config, on the meta
    device; the loader is stopped before it reads any file."""
    import torch

    cls = getattr(module, cls_name)
    made: list = []

    class Recorded(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            raise _Built

    setattr(module, cls_name, Recorded)
    try:
        with torch.device("meta"):
            call()
    except _Built:
        pass
    finally:
        setattr(module, cls_name, cls)
    return made[0]


def build_anima(out: Path, sd_scripts: Path) -> None:
    """Anima's fixed DiT (2.1B) with random weights (the file's keys under net.), a random Qwen-Image VAE, and a
    one-layer Qwen3 text encoder as a folder (its config, weights and sd-scripts' own Qwen3 tokenizer files)."""
    import torch
    from library import anima_models, anima_utils, qwen_image_autoencoder_kl
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = json.loads((sd_scripts / "configs" / "qwen3_06b" / "config.json").read_text())
    cfg.update(num_hidden_layers=1, max_window_layers=1)
    q = out / "qwen3"
    q.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(sd_scripts / "configs" / "qwen3_06b" / f, q / f)
    torch.manual_seed(0)
    Qwen3ForCausalLM(Qwen3Config(**cfg)).to(torch.bfloat16).save_pretrained(str(q), safe_serialization=True)
    dit = built_by(anima_models, "Anima", lambda: anima_utils.load_anima_model("cpu", "-", "torch", False, "cpu", torch.bfloat16))
    vae = built_by(qwen_image_autoencoder_kl, "AutoencoderKLQwenImage", lambda: qwen_image_autoencoder_kl.load_vae("-"))
    # fp32: sd-scripts loads Anima's DiT in the file's dtype, and bf16 runs ~100x slower than fp32 on AVX2-only CPUs
    random_file(out / "anima.safetensors", dit, torch.float32, prefix="net.", skip=(".seq", "dim_spatial_range", "dim_temporal_range", "inv_freq"))
    random_file(out / "vae.safetensors", vae, torch.float32)


if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if kind in ("flux", "flux-schnell", "flux-full"):
        build_flux(out, schnell=kind == "flux-schnell", full=kind == "flux-full")
    elif kind == "sd3":
        build_sd3(out)
    elif kind == "anima":
        build_anima(out, Path.cwd())
    else:
        raise SystemExit(f"unknown toy {kind}")
