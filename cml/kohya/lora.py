"""sd-scripts' ``networks.lora``, as cml's trainer process trains with it: the same LoRA, saved as a plain
``networks.lora`` file (cml writes ``ss_network_module = networks.lora`` and keeps this module's name in
``cml_network_module``). Two changes, each exact:

1. **The --base_weights module-list fix.** ``LoRANetwork.__init__`` extends the *class* list
   ``UNET_TARGET_REPLACE_MODULE`` in place when it builds a network from weights (``--base_weights``). Every
   network created afterwards in the same process, including the diff LoRA being trained, then also gets LoRA on
   ResnetBlock2D's Linear layers (``time_emb_proj``): the in-memory merge would train other modules than the
   checkpoint merge. sd-scripts is pinned and never edited: the list is restored after each network built from
   weights.
2. **No multiplies that change nothing.** ``LoRAModule.forward`` ends with ``org + lora * multiplier * scale``: at
   the article's settings (multiplier 1, alpha = dim, so scale 1) two multiplies by 1.0 per module and step,
   192 modules on SD1.5. ``x * 1.0 == x`` in IEEE arithmetic, so leaving them out gives the same bits; at
   multiplier 0 the LoRA's output is not computed at all (``org + lora * 0 == org`` for finite values). Modules
   with dropout keep sd-scripts' own forward (it draws random numbers).

Imported only by the trainer (``network_module = cml.kohya.lora``): the class change stays in that process.
"""

from networks import lora as _lora
from networks.lora import *  # noqa: F403  (train_network.py calls create_network etc. on this module)

_sd_scripts_forward = _lora.LoRAModule.forward


def _forward(self, x):
    if self.training and (self.module_dropout is not None or self.dropout is not None or self.rank_dropout is not None):
        return _sd_scripts_forward(self, x)
    org_forwarded = self.org_forward(x)
    m = self.multiplier
    if m == 0:
        return org_forwarded
    lx = self.lora_up(self.lora_down(x))
    if m == 1 and self.scale == 1:
        return org_forwarded + lx
    return org_forwarded + lx * m * self.scale


_lora.LoRAModule.forward = _forward


def create_network_from_weights(*args, **kwargs):
    saved = list(_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    try:
        return _lora.create_network_from_weights(*args, **kwargs)
    finally:
        _lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved
