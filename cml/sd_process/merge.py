"""A copy machine model written for the families sd-scripts has no merge script for, with sd-scripts' own functions
(run in its Python, by cml's merge stage):

    python -m cml.sd_process.merge anima|sd3 --base BASE --lora COPY_LORA --save_to OUT

- Anima: sd-scripts' merge-at-load (``library.lora_utils.load_safetensors_with_lora_and_fp8``, as
  ``anima_utils.load_anima_model`` calls it), then ``anima_utils.save_anima_model`` (the ``net.`` prefix back);
- SD3/SD3.5: the MMDiT built from the checkpoint (``sd3_utils.load_mmdit``), the LoRA merged with the family's own
  network (``networks.lora_sd3``: ``create_network_from_weights`` and ``merge_to``), and the checkpoint written back
  with its other tensors (VAE, text encoders) and metadata as they were.

Each merges in the precision of the base's tensors, on the CPU, and prints how many of the LoRA's modules it merged:
none merged is an error (the file would equal its base).
"""

from __future__ import annotations

import argparse
import sys


def merge_anima(base: str, lora: str, save_to: str) -> int:
    import torch
    from library import anima_utils, lora_utils
    from library.safetensors_utils import WeightTransformHooks
    from safetensors import safe_open
    from safetensors.torch import load_file

    lora_sd = load_file(lora)
    before = {k for k in lora_sd if k.endswith(".lora_down.weight")}
    hooks = WeightTransformHooks(rename_hook=lambda k: k[len("net.") :] if k.startswith("net.") else k)
    sd = lora_utils.load_safetensors_with_lora_and_fp8(
        model_files=base,
        lora_weights_list=[lora_sd],
        lora_multipliers=[1.0],
        fp8_optimization=False,
        calc_device=torch.device("cpu"),
        dit_weight_dtype=None,
        weight_transform_hooks=hooks,
    )
    with safe_open(base, framework="pt") as f:  # type: ignore[attr-defined]  # a context manager; its stub says not
        metadata = dict(f.metadata() or {})
    anima_utils.save_anima_model(save_to, sd, metadata)
    return len(before)


def merge_sd3(base: str, lora: str, save_to: str) -> int:
    import torch
    from library import sd3_utils
    from library.safetensors_utils import load_safetensors
    from networks import lora_sd3
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(base, framework="pt") as f:  # type: ignore[attr-defined]  # a context manager; its stub says not
        metadata = dict(f.metadata() or {})
    state_dict = load_safetensors(base, "cpu")
    prefix = "model.diffusion_model."
    dtype = next(v.dtype for k, v in state_dict.items() if k.startswith(prefix) and v.is_floating_point())
    rest = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    mmdit = sd3_utils.load_mmdit(state_dict, dtype, "cpu")  # takes the MMDiT's tensors out of state_dict
    weights_sd = load_file(lora)
    network, _ = lora_sd3.create_network_from_weights(1.0, None, None, [], mmdit, weights_sd, for_inference=True)
    merged = len(network.unet_loras)
    network.merge_to([], mmdit, weights_sd, dtype, "cpu")
    out = {f"{prefix}{k}": v.contiguous() for k, v in mmdit.state_dict().items()} | rest
    save_file(out, save_to, metadata)
    del torch
    return merged


MERGES = {"anima": merge_anima, "sd3": merge_sd3}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m cml.sd_process.merge")
    ap.add_argument("family", choices=sorted(MERGES))
    ap.add_argument("--base", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("--save_to", required=True)
    a = ap.parse_args(argv)
    n = MERGES[a.family](a.base, a.lora, a.save_to)
    if n == 0:
        print(f"cml: merge: no module of {a.lora} was merged into {a.base}", file=sys.stderr)
        return 1
    print(f"cml: merge: {n} LoRA modules merged into {a.save_to}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
