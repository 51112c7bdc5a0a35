"""sd-scripts' ``networks.lora`` with one defect worked around, for the in-memory merge mode.

``LoRANetwork.__init__`` extends the *class* list ``UNET_TARGET_REPLACE_MODULE`` in place when it
builds a network from weights (``--base_weights``). Every network created afterwards in the
same process, including the diff LoRA being trained, then also gets LoRA on ResnetBlock2D's
Linear layers (``time_emb_proj``): the in-memory mode would train other modules than the
checkpoint mode. sd-scripts is pinned and never edited, so the remedy lives here: restore the
list after each network built from weights. The files written are plain ``networks.lora`` LoRAs.
"""

from networks import lora as _lora
from networks.lora import *  # noqa: F403  (train_network.py calls create_network etc. on this module)


def create_network_from_weights(*args, **kwargs):
    saved = list(_lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE)
    try:
        return _lora.create_network_from_weights(*args, **kwargs)
    finally:
        _lora.LoRANetwork.UNET_TARGET_REPLACE_MODULE[:] = saved
