"""sd-scripts' LoRA trainers as cml runs them: their own classes and code, with exact speed-ups.

    python -m cml.kohya.train train_network|sdxl_train_network --config_file train.toml

Runs in sd-scripts' folder with its Python (sd-scripts on the path). The trainer is sd-scripts' ``NetworkTrainer``
(or ``SdxlNetworkTrainer``), started the way its own ``__main__`` starts it, with these changes, each giving the
same LoRA bit for bit (tests/sdscripts/test_speedups.py trains both ways and compares):

- **The text encoder's output, computed once.** U-Net-only training with one fixed caption (the article: an empty
  one) runs the frozen text encoder on the same tokens at every step. Its output is kept and handed back while
  the tokens are the same and no gradient is asked for: the same tensor the encoder would compute again. (SDXL
  stages already cache it with sd-scripts' own ``cache_text_encoder_outputs``.)
- **bitsandbytes' 8-bit optimizers without a device sync per parameter.** ``Optimizer8bit.step`` calls
  ``torch.cuda.synchronize()`` after each of its parameters (384 for a dim-16 SD1.5 LoRA): the host waits for the
  GPU 384 times a step. The same kernels run in the same order on one stream without it; the step's last sync
  is kept for paged optimizers, as bitsandbytes does.
- the LoRA module's forward without multiplies by 1.0: cml/kohya/lora.py (``network_module = cml.kohya.lora``).
"""

from __future__ import annotations

import sys
from typing import Any


class FixedTextEncoding:
    """A text encoding strategy that computes each distinct set of tokens once, while no gradient is asked for."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._tokens: list | None = None
        self._out: Any = None
        self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_tokens(self, tokenize_strategy, models, tokens):
        import torch

        if torch.is_grad_enabled():  # a text encoder that trains: nothing may be kept
            return self._inner.encode_tokens(tokenize_strategy, models, tokens)
        same = (
            self._tokens is not None
            and len(self._tokens) == len(tokens)
            and all(a.shape == b.shape and torch.equal(a, b.to(a.device)) for a, b in zip(self._tokens, tokens))
        )
        if same:
            self.reused += 1
            return self._out
        self._out = self._inner.encode_tokens(tokenize_strategy, models, tokens)
        self._tokens = [t.detach().clone() for t in tokens]
        return self._out


def unsynced_step(self, closure=None):
    """bitsandbytes' Optimizer8bit.step (0.4x-0.5x), less the torch.cuda.synchronize() after each parameter."""
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
    """Swap in unsynced_step where bitsandbytes has the step it was written from; False where it does not."""
    try:
        from bitsandbytes.optim import optimizer
    except Exception:  # no bitsandbytes here: nothing to speed up
        return False
    import inspect

    src = inspect.getsource(optimizer.Optimizer8bit.step)
    if "sync_gpu(p)" not in src or "self.update_step(group, p, gindex, pindex)" not in src:
        return False  # another bitsandbytes: leave its step as it is
    optimizer.Optimizer8bit.step = unsynced_step  # type: ignore[method-assign]  # the class, in the trainer process only
    return True


def trainer_class(script: str):
    """sd-scripts' trainer of ``script``, with the text encoder's output kept."""
    module = __import__(script)
    base = module.SdxlNetworkTrainer if script == "sdxl_train_network" else module.NetworkTrainer

    class Trainer(base):  # type: ignore[misc, valid-type]
        def get_text_encoding_strategy(self, args):
            inner = super().get_text_encoding_strategy(args)
            self.cml_text_encoding = FixedTextEncoding(inner) if args.network_train_unet_only and not args.weighted_captions else inner
            return self.cml_text_encoding

    return module, Trainer


def main(argv: list[str]) -> int:
    script, rest = argv[0], argv[1:]
    module, trainer = trainer_class(script)
    from library import train_util

    parser = module.setup_parser()
    args = parser.parse_args(rest)
    train_util.verify_command_line_training_args(args)
    sys.argv = [f"{script}.py", *rest]  # read_config_from_file reads sys.argv again
    args = train_util.read_config_from_file(args, parser)
    optimizer = str(getattr(args, "optimizer_type", "") or "").lower()
    if "8bit" in optimizer or optimizer.startswith("paged"):
        patch_8bit_optimizers()
    trainer().train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
