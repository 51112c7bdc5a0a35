"""Every change cml makes to sd-scripts' or bitsandbytes' code, in one place, each guarded (the axolotl
``monkeypatch/`` way): before a patch replaces a function, ``check`` compares the function's signature and a
fingerprint of its source with those of the code the patch was written from. A patch that no longer applies is
left out with one warning line (its speed-up is off; nothing is silently wrong); `cml doctor` lists each one and
whether it applies here (``python -m cml.sd_process.patches`` prints them as JSON).

Patches (each gives the same numbers as the code it replaces: tests/sdscripts/test_speedups.py trains both ways):

- ``lora-forward``: ``networks.lora.LoRAModule.forward`` without its multiplies by 1.0 (multiplier 1, alpha = dim)
  and without the LoRA's computation at multiplier 0; modules with dropout keep sd-scripts' forward;
- ``lora-base-weights``: ``networks.lora.create_network_from_weights`` restores ``LoRANetwork``'s class list
  ``UNET_TARGET_REPLACE_MODULE``, which ``LoRANetwork.__init__`` extends in place when it builds a network from
  weights (``--base_weights``): without it the diff LoRA trained next in the same process would also get
  ``time_emb_proj`` modules (a fix, not a speed-up: without it the in-memory merge trains other modules);
- ``sd-load-no-init``: SD1/SD2 checkpoints loaded without drawing random weights the checkpoint then overwrites
  (``library.model_util.load_models_from_stable_diffusion_checkpoint``), with torch's generator set where the draws
  would leave it (cml/sd_process/model_init.py);
- ``known-sha256``: ``library.train_util.calculate_sha256`` answered for a file cml has hashed already
  (``CML_KNOWN_SHA256``: path -> size, mtime, inode, ctime and sha256, checked against the file as it is);
- ``8bit-no-sync``: bitsandbytes' ``Optimizer8bit.step`` without ``torch.cuda.synchronize()`` after each parameter.

Hooks (sd-scripts' own extension points that cml's trainer overrides, cml/sd_process/trainer.py): their signatures
are checked the same way, so that a changed hook is found before a run, not in the middle of one.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Patch:
    name: str
    target: str  # "module:Qualified.name"
    what: str  # one line: what it changes
    signature: str | None = None  # str(inspect.signature(...)) of the code it was written for
    fingerprints: tuple[str, ...] = ()  # sha256[:16] of that code's source (inspect.getsource), one per known version
    kind: str = "speed-up"  # speed-up | fix | hook


PATCHES = (
    Patch(
        "lora-forward",
        "networks.lora:LoRAModule.forward",
        "LoRA forward without multiplies by 1.0 (exact)",
        "(self, x)",
        ("06f04f12902cdf69",),
    ),
    Patch(
        "lora-base-weights",
        "networks.lora:LoRANetwork.__init__",
        "--base_weights leaves LoRANetwork's module list as it was: the in-memory merge trains the checkpoint merge's modules",
        None,
        ("ca4fbee54073bac7",),
        kind="fix",
    ),
    Patch(
        "lora-base-weights-entry",
        "networks.lora:create_network_from_weights",
        "the function lora-base-weights wraps",
        "(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False, **kwargs)",
        kind="fix",
    ),
    Patch(
        "sd-load-no-init",
        "library.model_util:load_models_from_stable_diffusion_checkpoint",
        "SD1/SD2 models built without random weights the checkpoint overwrites (exact: the generator set where they leave it)",
        "(v2, ckpt_path, device='cpu', dtype=None, unet_use_linear_projection_in_v2=True)",
        ("392e89589c00695b",),
    ),
    Patch(
        "known-sha256",
        "library.train_util:calculate_sha256",
        "the base model's sha256 for the LoRA's metadata taken from cml, which hashed it already (the same string)",
        "(filename)",
        ("241726420618097a",),
    ),
    Patch(
        "8bit-no-sync",
        "bitsandbytes.optim.optimizer:Optimizer8bit.step",
        "bitsandbytes' 8-bit optimizers without a device sync per parameter (exact: the same kernels, in order, on one stream)",
        "(self, closure=None)",
        ("1ff73e3157161684",),
    ),
    Patch(
        "text-encoding-once",
        "library.strategy_base:TextEncodingStrategy.encode_tokens",
        "the text encoder's output for each distinct batch of captions computed once (hook: the trainer's get_text_encoding_strategy)",
        "(self, tokenize_strategy: library.strategy_base.TokenizeStrategy, models: List[Any], tokens: List[torch.Tensor]) -> List[torch.Tensor]",
        kind="hook",
    ),
    Patch(
        "hook-noise-pred",
        "train_network:NetworkTrainer.get_noise_pred_and_target",
        "the direct method's step (hook)",
        "(self, args, accelerator, noise_scheduler, latents, batch, text_encoder_conds, unet, network, weight_dtype, train_unet, is_train=True)",
        kind="hook",
    ),
    Patch(
        "hook-cache-text",
        "train_network:NetworkTrainer.cache_text_encoder_outputs_if_needed",
        "the direct method caches A's latents beside B's (hook)",
        "(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype)",
        kind="hook",
    ),
    Patch(
        "hook-metadata",
        "train_network:NetworkTrainer.update_metadata",
        "the LoRA's metadata says it is a plain networks.lora file (hook)",
        "(self, metadata, args)",
        kind="hook",
    ),
    Patch(
        "hook-step-start",
        "train_network:NetworkTrainer.on_step_start",
        "the step profiler (make bench-gpu) marks each step (hook)",
        "(self, args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train: bool = True)",
        kind="hook",
    ),
    Patch(
        "hook-network",
        "train_network:NetworkTrainer.post_process_network",
        "the direct method saves its LoRA scaled by w (hook)",
        "(self, args, accelerator, network, text_encoders, unet)",
        kind="hook",
    ),
    Patch(
        "lora-save",
        "networks.lora:LoRANetwork.save_weights",
        "the direct method's LoRA saved with lora_up x w",
        "(self, file, dtype, metadata)",
        kind="hook",
    ),
)
BY_NAME = {p.name: p for p in PATCHES}


def fingerprint(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def resolve(target: str) -> Any:
    """The object a target names (imports its module)."""
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check(patch: Patch, obj: Any = None, *, source: str | None = None, signature: str | None = None) -> str | None:
    """None when ``patch`` applies to the code installed here (or to ``source``/``signature`` given instead); else why
    not, in a few words."""
    if obj is None and (source is None or signature is None):
        try:
            obj = resolve(patch.target)
        except (ImportError, AttributeError) as e:
            return f"{patch.target} is not there ({type(e).__name__}: {e})"
    if patch.signature is not None:
        sig = signature if signature is not None else str(inspect.signature(obj))
        if sig != patch.signature:
            return f"{patch.target} has the signature {sig}, not {patch.signature}"
    if patch.fingerprints:
        try:
            src = source if source is not None else inspect.getsource(obj)
        except (OSError, TypeError) as e:
            return f"the source of {patch.target} cannot be read ({e})"
        if fingerprint(src) not in patch.fingerprints:
            return f"{patch.target} is not the code this patch was written from (its source changed)"
    return None


_warned: set[str] = set()
# The code each applied patch replaced, by patch name (the tests compare the two).
ORIGINALS: dict[str, Any] = {}


def applies(name: str) -> bool:
    """Whether the patch (and every hook or entry it needs) applies here; a patch that does not is named once on
    stderr (where the stage's log gets it) and left out."""
    names = [name, *(n for n in BY_NAME if n.startswith(name + "-"))]
    for n in names:
        why = check(BY_NAME[n])
        if why is not None:
            if name not in _warned:
                _warned.add(name)
                print(f"cml: warning: patch {name} does not apply ({why}): {BY_NAME[name].what} is off", file=sys.stderr, flush=True)
            return False
    return True


# ------------------------------------------------------------------------------------------------ the patches


def patch_lora_module() -> None:
    """lora-forward and lora-base-weights on sd-scripts' networks.lora (cml's network module imports it first)."""
    from networks import lora

    if applies("lora-forward") and "lora-forward" not in ORIGINALS:
        own = ORIGINALS["lora-forward"] = lora.LoRAModule.forward

        def forward(self, x):
            if self.training and (self.module_dropout is not None or self.dropout is not None or self.rank_dropout is not None):
                return own(self, x)  # dropout draws random numbers: sd-scripts' own forward
            org_forwarded = self.org_forward(x)
            m = self.multiplier
            if m == 0:
                return org_forwarded  # org + lora * 0 == org for finite values
            lx = self.lora_up(self.lora_down(x))
            if m == 1 and self.scale == 1:
                return org_forwarded + lx  # x * 1.0 == x in IEEE arithmetic
            return org_forwarded + lx * m * self.scale

        lora.LoRAModule.forward = forward
    if not applies("lora-base-weights") or "lora-base-weights" in ORIGINALS:
        return
    build = ORIGINALS["lora-base-weights"] = lora.create_network_from_weights

    def create_network_from_weights(*args, **kwargs):
        saved = list(lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
        try:
            return build(*args, **kwargs)
        finally:
            lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved

    lora.create_network_from_weights = create_network_from_weights


def patch_model_load(exact: bool) -> None:
    """sd-load-no-init: exact=True in trainers (the generator set where the draws leave it), False in the generator
    (gen_img.py seeds each image's noise itself). See cml/sd_process/model_init.py."""
    if not applies("sd-load-no-init"):
        return
    from library import model_util

    from cml.sd_process.model_init import without_init

    model_util.load_models_from_stable_diffusion_checkpoint = without_init(model_util.load_models_from_stable_diffusion_checkpoint, exact)


def known_sha256(path: str, table: dict[str, list]) -> str | None:
    """The sha256 cml gave for ``path`` (CML_KNOWN_SHA256), when the file is still the one cml hashed."""
    entry = table.get(os.path.abspath(path))
    if not entry:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    *identity, digest = entry
    return str(digest) if identity == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns] else None


def patch_model_hash() -> None:
    """known-sha256: sd-scripts hashes the whole base model for the LoRA's metadata at every stage (2 GB for SD1.5,
    7 GB for SDXL); cml hands the hashes it knows in CML_KNOWN_SHA256."""
    try:
        table = json.loads(os.environ.get("CML_KNOWN_SHA256") or "{}")
    except ValueError:
        table = {}
    if not table or not applies("known-sha256"):
        return
    from library import train_util

    own = train_util.calculate_sha256

    def calculate_sha256(filename):
        return known_sha256(filename, table) or own(filename)

    train_util.calculate_sha256 = calculate_sha256


def unsynced_step(self, closure=None):
    """bitsandbytes' Optimizer8bit.step, less the torch.cuda.synchronize() after each parameter."""
    import torch
    from bitsandbytes.utils import sync_gpu

    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    if not self.initialized:
        self.check_overrides()
        self.to_gpu()
        self.initialized = True
    p = None
    for gindex, group in enumerate(self.param_groups):
        for pindex, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            if len(state) == 0:
                self.init_state(group, p, gindex, pindex)
            self.prefetch_state(p)
            self.update_step(group, p, gindex, pindex)
    if self.is_paged and p is not None:
        sync_gpu(p)  # paged operations are asynchronous: one sync at the end, as bitsandbytes does
    return loss


def patch_8bit_optimizers() -> bool:
    """8bit-no-sync; False where bitsandbytes is missing or not the code unsynced_step was written from."""
    try:
        from bitsandbytes.optim import optimizer
    except Exception:  # no bitsandbytes here: nothing to speed up
        return False
    if not applies("8bit-no-sync"):
        return False
    optimizer.Optimizer8bit.step = unsynced_step  # type: ignore[method-assign]  # the class, in the trainer process only
    return True


def status() -> list[dict[str, Any]]:
    """Every patch and hook, and whether it applies here (for `cml doctor`)."""
    out = []
    for p in PATCHES:
        why = check(p)
        out.append({"name": p.name, "kind": p.kind, "target": p.target, "what": p.what, "applies": why is None, "why": why})
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(status()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
