"""Host tensor operations per training step, counted with sd-scripts' own modules on the demo model (run in
sd-scripts' Python by `make bench`):

    python -m cml.sd_process.dev.opcount MODEL RESOLUTION

A GPU pays a kernel launch and Python's dispatch for every operation (~10-20 us each), so at batch 1 the count is a
proxy a CPU can measure for what a GPU pays per step on the host. One step as train_network.py makes it: the text
encoder on the caption, the U-Net forward and backward, the optimizer step; counted for the U-Net alone, with
sd-scripts' networks.lora (dim 16, U-Net only), and with the optimizer step (bitsandbytes' AdamW8bit where it runs,
else AdamW), before and after cml's exact cuts (cml/sd_process/patches.py): the text encoder run once,
no multiplies by 1.0 in the LoRA's forward, no device sync per parameter in the 8-bit optimizer (counted as the
calls to bitsandbytes' sync_gpu, which are syncs on a GPU). Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any


def count(fn) -> tuple[int, Counter]:
    """The aten operations dispatched while ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: Counter = Counter()

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Counting():
        fn()
    return sum(ops.values()), ops


def main(argv: list[str]) -> int:
    import torch
    from library import model_util

    model, resolution = argv[0], int(argv[1])
    torch.manual_seed(0)
    te, _vae, unet = model_util.load_models_from_stable_diffusion_checkpoint(False, model)
    unet.set_use_sdpa(True)
    te.requires_grad_(False)
    unet.requires_grad_(False)
    latent = torch.randn(1, 4, resolution // 8, resolution // 8)
    tokens = torch.full((1, 77), 49407, dtype=torch.long)
    t = torch.tensor([500])

    def text():
        with torch.no_grad():
            return te(tokens)[0]

    ctx = text()

    def unet_step():
        x = latent.clone().requires_grad_(True)  # sd-scripts asks for the input's gradient: the backward runs through the U-Net
        out = unet(x, t, ctx).sample
        torch.nn.functional.mse_loss(out.float(), latent).backward()

    result: dict[str, Any] = {"resolution": resolution}
    result["text_encoder"], _ = count(text)
    result["unet"], _ = count(unet_step)

    from networks import lora

    net = lora.create_network(1.0, 16, 16.0, None, te, unet)
    net.apply_to(te, unet, apply_text_encoder=False, apply_unet=True)
    params = [p for m in net.unet_loras for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    result["lora_modules"] = len(net.unet_loras)
    result["unet_lora_sd_scripts"], ops = count(unet_step)
    result["mul_sd_scripts"] = ops["aten.mul"]
    from cml.sd_process import lora as cml_lora  # noqa: F401  (patches LoRAModule.forward: the exact, faster one)

    # apply_to() put the LoRA module's bound forward of then on each wrapped module: bind the patched one (in cml's
    # trainer the patch comes first: train_network.py imports network_module before it builds the network)
    for mod in unet.modules():
        bound = mod.__dict__.get("forward")
        if isinstance(getattr(bound, "__self__", None), lora.LoRAModule):
            mod.forward = bound.__self__.forward

    result["unet_lora_cml"], ops = count(unet_step)
    result["mul_cml"] = ops["aten.mul"]

    optimizer, name = None, "AdamW"
    try:
        import bitsandbytes as bnb
        from bitsandbytes.optim import optimizer as bnb_optimizer

        optimizer, name = bnb.optim.AdamW8bit(params, lr=1e-3), "AdamW8bit"
        unet_step()
        optimizer.step()  # its state is made at the first step: counted from the second
    except Exception:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        unet_step()
        optimizer.step()
    result["optimizer"] = name
    syncs = {"n": 0}
    if name == "AdamW8bit":
        real = bnb_optimizer.sync_gpu

        def counted(p):
            syncs["n"] += 1
            return real(p)

        bnb_optimizer.sync_gpu = counted
    result["optimizer_step_sd_scripts"], _ = count(optimizer.step)
    result["device_syncs_sd_scripts"] = syncs["n"]
    if name == "AdamW8bit":
        from cml.sd_process.patches import unsynced_step

        syncs["n"] = 0
        result["optimizer_step_cml"], _ = count(lambda: unsynced_step(optimizer))
        result["device_syncs_cml"] = syncs["n"]
    else:
        result["optimizer_step_cml"], result["device_syncs_cml"] = result["optimizer_step_sd_scripts"], 0
    te_ops = result["text_encoder"]
    result["step_before"] = te_ops + result["unet_lora_sd_scripts"] + result["optimizer_step_sd_scripts"]
    result["step_after"] = result["unet_lora_cml"] + result["optimizer_step_cml"]  # the text encoder's output is kept
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
