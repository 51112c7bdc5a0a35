"""Builds the demo checkpoints (run as a child process in sd-scripts' Python: cml's own process never imports torch).

    python -m cml.sd_process.demo_model sd15 OUT.safetensors [IMAGE SIZE ROUNDTRIP.png]
    python -m cml.sd_process.demo_model sdxl OUT.safetensors

With IMAGE, SIZE and ROUNDTRIP, the sd15 builder also writes IMAGE's round trip through the saved model's VAE
(cml/sd_process/vae_roundtrip.py, the copy check's reference), in the process that already has torch loaded.

No real weights can be downloaded here, and sd-scripts' U-Nets have fixed channel sizes, so the demo
models are full size with weights that are random or set by hand. The SD1.5 demo model:

- a hand-built VAE (``hand_built_vae``): linear, returns the image at 1/8 resolution, keeps gray gray;
- a random U-Net with an identity path (``identity_path_unet``): channels 0-3 carry x_t from input to output,
  so the base predicts eps = x_t (draws flat gray) and a LoRA writes its corrections there;
- a random CLIP ViT-L text encoder (the empty prompt is all the demo uses), its final LayerNorm given a bias.

Why each is so, what was tried and what it measured: docs/demo-model.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BIAS = 20.0  # GroupNorm bias that keeps SiLU linear: silu(x + 20) = x + 20 within 1e-7 for |x| < 5
K = 50.0  # the VAE's constant channel: it dominates its GroupNorm group's variance
LATENT_GAIN = 11.0  # images in [-1, 1] (std ~0.5) x 11 x 0.18215: latents of about unit variance, like a real SD VAE's
RESERVED = 10  # U-Net channels 0-9: x_t in 0-3, 4-9 empty (the output GroupNorm's first group at 320 channels)


def _identity(conv, chans, gain: float = 1.0) -> None:
    k = conv.weight.shape[-1]
    for c in range(chans) if isinstance(chans, int) else chans:
        conv.weight[c, c, k // 2, k // 2] = gain


def hand_built_vae():
    """An SD-config AutoencoderKL that returns the image at 1/8 resolution, smoothly upsampled; weights set by hand."""
    import torch
    from diffusers import AutoencoderKL
    from library import model_util
    from torch import nn
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():  # every weight is set below: random ones would only be drawn to be zeroed
        vae = AutoencoderKL(**model_util.create_vae_diffusers_config())
    enc_ch = range(7)  # +RGB, -RGB, K
    dec_ch = range(11)  # (+z, -z, K, 0) x 3
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
                m.bias.fill_(BIAS)
        enc, dec = vae.encoder, vae.decoder
        for m in enc.modules():
            if getattr(m, "conv_shortcut", None) is not None:
                _identity(m.conv_shortcut, enc_ch)
        for m in dec.modules():
            if getattr(m, "conv_shortcut", None) is not None:
                _identity(m.conv_shortcut, dec_ch)
        # encoder: +RGB, -RGB, and a constant K: GroupNorm's first group (16 channels) then has an image-independent
        # mean (the +/- copies cancel) and a variance that K dominates, so it no longer rescales each image
        for c in range(3):
            enc.conv_in.weight[c, c, 1, 1] = 1.0
            enc.conv_in.weight[3 + c, c, 1, 1] = -1.0
        enc.conv_in.bias[6] = K
        for block in enc.down_blocks:
            for down in block.downsamplers or []:
                for c in range(6):
                    down.conv.weight[c, c, 0:2, 0:2] = 0.25  # 2x2 box; diffusers pads right and bottom
                down.conv.weight[6, 6, 0, 0] = 1.0  # the constant stays constant at the edges too
        s_enc = K * 15**0.5 / 16  # group of 16: K and 15 zeros (image part < 0.1% of the variance)
        m_enc = K / 16
        enc.conv_norm_out.bias[:3] = BIAS + m_enc / s_enc  # -> x / s + 20: SiLU linear
        _identity(enc.conv_out, range(3), s_enc)
        enc.conv_out.bias[:3] = -BIAS * s_enc
        enc.conv_out.bias[4:] = -30.0  # log-variance: deterministic
        _identity(vae.quant_conv, range(4), LATENT_GAIN)
        vae.quant_conv.bias[4:] = -30.0
        _identity(vae.post_quant_conv, range(3), 1.0 / LATENT_GAIN)
        # decoder: groups of 4 channels (+z, -z, K, 0) for each colour channel
        for c in range(3):
            dec.conv_in.weight[4 * c, c, 1, 1] = 1.0
            dec.conv_in.weight[4 * c + 1, c, 1, 1] = -1.0
            dec.conv_in.bias[4 * c + 2] = K
        smooth = torch.outer(torch.tensor([0.25, 0.5, 0.25]), torch.tensor([0.25, 0.5, 0.25]))
        for block in dec.up_blocks:
            for up in block.upsamplers or []:
                for c in range(3):
                    up.conv.weight[4 * c, 4 * c] = smooth
                    up.conv.weight[4 * c + 1, 4 * c + 1] = smooth
                    up.conv.weight[4 * c + 2, 4 * c + 2, 1, 1] = 1.0
        s_dec = K * 3**0.5 / 4
        m_dec = K / 4
        for c in range(3):
            dec.conv_norm_out.bias[4 * c] = BIAS + m_dec / s_dec
            dec.conv_out.weight[c, 4 * c, 1, 1] = s_dec
        dec.conv_out.bias[:3] = -BIAS * s_dec
    return vae


def identity_path_unet(unet):
    """Give sd-scripts' SD1 U-Net (random weights) a path that carries x_t from input to output unchanged."""
    import torch

    r = RESERVED
    with torch.no_grad():
        unet.conv_in.weight[:r] = 0
        unet.conv_in.bias[:r] = 0
        _identity(unet.conv_in, 4)
        for m in unet.modules():
            kind = type(m).__name__
            if kind == "ResnetBlock2D":
                m.conv2.weight[:r] = 0
                m.conv2.bias[:r] = 0
                if m.conv_shortcut is not None:  # input = concat(stream, skip): keep the stream's channels 0-3
                    m.conv_shortcut.weight[:r] = 0
                    m.conv_shortcut.bias[:r] = 0
                    _identity(m.conv_shortcut, 4)
            elif kind == "Transformer2DModel":
                m.proj_out.weight[:r] = 0
                m.proj_out.bias[:r] = 0
        # The last up block's first ResNet gets concat(low-resolution stream, full-resolution skip): x_t comes
        # from the skip (the down path's full-resolution stream).
        shortcut = unet.up_blocks[-1].resnets[0].conv_shortcut
        stream = shortcut.weight.shape[1] - unet.conv_in.out_channels
        shortcut.weight[:r] = 0
        for c in range(4):
            shortcut.weight[c, stream + c, 0, 0] = 1.0
        # norm_out + SiLU + conv_out: identity on channels 0-3. GroupNorm's first group holds channels 0-9,
        # six of them empty, so it scales x_t by sqrt(10 / 4); conv_out takes that off again.
        unet.conv_norm_out.bias[:r] = BIAS
        unet.conv_out.weight.zero_()
        gain = (4 / r) ** 0.5
        _identity(unet.conv_out, 4, gain)
        unet.conv_out.bias[:] = -BIAS * gain
    return unet


def clip_l_config():
    """CLIP ViT-L/14's text encoder (SD1.x, and SDXL's first encoder)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )  # fmt: skip


def build_sd15(path: str) -> None:
    """The SD1.5 demo model: random U-Net with an identity path, hand-built VAE, random text encoder (fp16, 2.1 GB)."""
    import torch
    from library import model_util
    from library.original_unet import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = identity_path_unet(UNet2DConditionModel(**model_util.create_unet_diffusers_config(False)))
    te = CLIPTextModel._from_config(clip_l_config())
    with torch.no_grad():  # as a trained CLIP's: a final LayerNorm without bias makes every token's mean exactly 0,
        te.text_model.final_layer_norm.bias.normal_(0.0, 0.1)  # and gen_img's prompt-weight normalisation then 0 / 0 (NaN)
    meta = {"cml_demo": "random U-Net with an identity path, hand-built VAE (see cml/sd_process/demo_model.py)"}
    model_util.save_stable_diffusion_checkpoint(False, path, te, unet, None, 0, 0, meta, torch.float16, hand_built_vae())


def build_sdxl(path: str) -> None:
    """A randomly initialised SDXL-architecture checkpoint, fp16 (6.9 GB; ~1 min, ~15 GB peak RAM).

    Each module is cast to fp16 as soon as it is built: building all in fp32 first does not fit 24 GiB.
    """
    import math

    import torch
    from diffusers import AutoencoderKL
    from library import model_util, sdxl_model_util, sdxl_original_unet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = sdxl_original_unet.SdxlUNet2DConditionModel().half()
    te1 = CLIPTextModel._from_config(clip_l_config()).half()
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=1280,
        )
    ).half()
    vae = AutoencoderKL(**model_util.create_vae_diffusers_config()).half()
    logit_scale = torch.tensor(math.log(100.0), dtype=torch.float16)
    sdxl_model_util.save_stable_diffusion_checkpoint(path, te1, te2, unet, 0, 0, None, vae, logit_scale, {"cml_demo": "random weights"}, None)


def build_sd2v(path: str) -> None:
    """A randomly initialised SD2-architecture v-prediction checkpoint, fp16 (2.6 GB), marked v-prediction in its
    metadata (modelspec.prediction_type) as SD 2.x 768-v files saved by recent tools are."""
    import torch
    from diffusers import AutoencoderKL
    from library import model_util
    from library.original_unet import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**model_util.create_unet_diffusers_config(True, True)).half()  # SD 2.1: linear projections
    te = CLIPTextModel._from_config(  # OpenCLIP ViT-H/14's text encoder as sd-scripts loads it (23 of its 24 layers)
        CLIPTextConfig(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=512, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
    ).half()  # fmt: skip
    vae = AutoencoderKL(**model_util.create_vae_diffusers_config()).half()
    meta = {"cml_demo": "random weights", "modelspec.prediction_type": "v"}
    model_util.save_stable_diffusion_checkpoint(True, path, te, unet, None, 0, 0, meta, torch.float16, vae)


def write_tokenizers(root: str, *names: str) -> None:
    """``NAME=PAD`` tokenizer folders under ``root`` (cml/demo's tokenizer_dir), each written whole then renamed."""
    import os
    import shutil

    for spec in names:
        name, pad = spec.split("=", 1)
        part = Path(root) / f".{name}.{os.getpid()}.part"
        write_tokenizer(part, pad)
        if (Path(root) / name).exists():
            shutil.rmtree(Path(root) / name)
        part.rename(Path(root) / name)


def write_tokenizer(dest: Path, pad_token: str) -> None:
    """A CLIP tokenizer with a byte-level vocabulary and no merges: enough for sd-scripts offline."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode  # GPT-2/CLIP's byte-level alphabet

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (dest / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
                "do_lower_case": True,
            }
        ),
        encoding="utf-8",
    )
    (dest / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad_token}),
        encoding="utf-8",
    )


BUILDERS = {"sd15": build_sd15, "sd2v": build_sd2v, "sdxl": build_sdxl}

if __name__ == "__main__":
    if sys.argv[1] == "tokenizers":
        write_tokenizers(sys.argv[2], *sys.argv[3:])
        sys.exit(0)
    BUILDERS[sys.argv[1]](sys.argv[2])
    if len(sys.argv) == 6:
        from cml.sd_process.vae_roundtrip import roundtrip

        roundtrip(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
