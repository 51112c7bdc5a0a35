"""cml's trainer: sd-scripts' own trainer class of the family's script (``NetworkTrainer``, ``SdxlNetworkTrainer``,
...) with one piece per concern mixed in, each overriding only sd-scripts' own hooks (their signatures are checked
by cml/sd_process/patches.py):

- ``ExactSpeedups``: the text encoder's output computed once per distinct batch of captions, and the LoRA's metadata saying it
  is a plain networks.lora file (the same LoRA, bit for bit: tests/sdscripts/test_speedups.py);
- ``DirectMethod``: the direct method's step (cml/sd_process/direct.py) and its LoRA saved scaled by w;
- ``Profiling``: the step profiler of make bench-gpu (cml/sd_process/dev/profiler.py).

``compose(module, script, concerns)`` builds the class: ``class Trainer(*concerns, base)``.
"""

from __future__ import annotations

import sys
from typing import Any

from cml.sd_process import CML_NETWORK_MODULE
from cml.sd_process.direct import DirectStep, direct_timestep

TRAINER_CLASSES = {
    "train_network": "NetworkTrainer",
    "sdxl_train_network": "SdxlNetworkTrainer",
    "flux_train_network": "FluxNetworkTrainer",
    "sd3_train_network": "Sd3NetworkTrainer",
    "anima_train_network": "AnimaNetworkTrainer",
    "lumina_train_network": "LuminaNetworkTrainer",
    "hunyuan_image_train_network": "HunyuanImageNetworkTrainer",
}


class FixedTextEncoding:
    """A text encoding strategy that computes each distinct set of tokens once, while no gradient is asked for.

    A fixed caption is one set; a few captions in a shuffled batch are a few sets (three one-word captions at batch 3:
    six orders), each encoded the first time it comes and then kept. At most KEEP sets are kept (a dataset of many
    captions then encodes as sd-scripts does, with the memory bounded)."""

    KEEP = 16

    def __init__(self, inner: Any):
        self._inner = inner
        self._kept: dict[tuple, Any] = {}
        self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _key(tokens) -> tuple:
        return tuple((str(t.dtype), tuple(t.shape), t.detach().cpu().numpy().tobytes()) for t in tokens)

    def encode_tokens(self, tokenize_strategy, models, tokens):
        import torch

        if torch.is_grad_enabled():  # a text encoder that trains: nothing may be kept
            return self._inner.encode_tokens(tokenize_strategy, models, tokens)
        key = self._key(tokens)
        if key in self._kept:
            self.reused += 1
            if self.reused == 1:
                print("cml: text encoding: each distinct batch of captions encoded once, then kept", file=sys.stderr, flush=True)
            return self._kept[key]
        out = self._inner.encode_tokens(tokenize_strategy, models, tokens)
        if len(self._kept) < self.KEEP:
            self._kept[key] = out
        return out


def plain_lora_metadata(metadata: dict) -> None:
    """A file saved by cml's networks.lora says what it is: a plain networks.lora LoRA (every loader's key), and which
    module trained it in cml's own key: also when commands.sh runs the trainer without cml."""
    if metadata.get("ss_network_module") == CML_NETWORK_MODULE:
        metadata["ss_network_module"] = "networks.lora"
        metadata["cml_network_module"] = CML_NETWORK_MODULE


class ExactSpeedups:
    """The text encoder's output computed once per distinct batch of captions (U-Net-only training), and plain metadata."""

    def get_text_encoding_strategy(self, args):
        from cml.sd_process import patches

        inner = super().get_text_encoding_strategy(args)  # type: ignore[misc]
        # the SD1/SD2 strategy's encode_tokens, as the patch checks it (the SDXL and DiT trainers cache their text
        # encoders' outputs themselves, and their strategies take other arguments)
        same_hook = patches.check(patches.BY_NAME["text-encoding-once"], type(inner).encode_tokens) is None
        if args.network_train_unet_only and not args.weighted_captions and same_hook and patches.applies("text-encoding-once"):
            inner = FixedTextEncoding(inner)
        self.cml_text_encoding = inner
        return inner

    def update_metadata(self, metadata, args):
        super().update_metadata(metadata, args)  # type: ignore[misc]
        plain_lora_metadata(metadata)


def scale_saved_lora(network, w: float) -> None:
    """Every file the network saves holds lora_up x w: weight 1 then gives what +w gave in training (the weights in
    training are left as they are)."""
    original = network.save_weights

    def save_weights(file, dtype, metadata):
        import torch

        ups = [m.lora_up.weight for m in network.unet_loras + network.text_encoder_loras]
        kept = [u.detach().clone() for u in ups]
        try:
            with torch.no_grad():
                for u in ups:
                    u.mul_(w)
            if metadata is not None:
                metadata["cml_direct_scaled"] = f"lora_up x {w}"
            return original(file, dtype, metadata)
        finally:
            with torch.no_grad():
                for u, k in zip(ups, kept):
                    u.copy_(k)

    network.save_weights = save_weights


class DirectMethod:
    """The direct method (cml/sd_process/direct.py) through sd-scripts' hooks."""

    cml_direct: DirectStep

    def post_process_network(self, args, accelerator, network, text_encoders, unet):
        super().post_process_network(args, accelerator, network, text_encoders, unet)  # type: ignore[misc]
        scale_saved_lora(network, self.cml_direct.w)

    def cache_text_encoder_outputs_if_needed(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
        self.cml_direct.cache_a(args, accelerator, vae, dataset)
        return super().cache_text_encoder_outputs_if_needed(args, accelerator, unet, vae, text_encoders, dataset, weight_dtype)  # type: ignore[misc]

    def get_noise_pred_and_target(
        self, args, accelerator, noise_scheduler, latents, batch, text_encoder_conds, unet, network, weight_dtype, train_unet, is_train=True
    ):
        import torch

        direct = self.cml_direct
        net = accelerator.unwrap_model(network)
        mult, target_from = direct.sides()
        a = direct.a_of(self, args, batch, latents)
        src, dst = (a, latents) if target_from == "a" else (latents, a)
        noise = torch.randn_like(latents)
        t = direct_timestep(direct.step, *direct.timesteps)
        timesteps = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
        noisy_src = noise_scheduler.add_noise(src, noise, timesteps)
        noisy_dst = noise_scheduler.add_noise(dst, noise, timesteps)
        noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.cpu()  # as sd-scripts leaves it
        net.set_multiplier(0.0)
        with torch.no_grad(), accelerator.autocast():
            target = self.call_unet(args, accelerator, unet, noisy_src, timesteps, text_encoder_conds, batch, weight_dtype)  # type: ignore[attr-defined]
        net.set_multiplier(mult)
        with torch.set_grad_enabled(is_train), accelerator.autocast():
            pred = self.call_unet(args, accelerator, unet, noisy_dst.requires_grad_(train_unet), timesteps, text_encoder_conds, batch, weight_dtype)  # type: ignore[attr-defined]
        net.set_multiplier(direct.w)  # samples drawn during training: what weight 1 of the saved LoRA gives
        if is_train:
            direct.step += 1
        return pred, target.detach(), timesteps, None


def compose(module: Any, script: str, concerns: list[type], attributes: dict[str, Any] | None = None) -> type:
    """The trainer class of sd-scripts' ``script`` (its imported ``module``) with ``concerns`` mixed in (first wins)."""
    base = getattr(module, TRAINER_CLASSES[script])
    return type("Trainer", (*concerns, base), dict(attributes or {}))
