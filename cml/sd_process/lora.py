"""sd-scripts' ``networks.lora``, as cml's trainer process trains with it (``network_module = cml.sd_process.lora``):
the same module with two of cml's patches (cml/sd_process/patches.py: ``lora-forward``, exact and faster;
``lora-base-weights``, the in-memory merge's module-list fix). Files it saves are plain ``networks.lora`` LoRAs
(the trainer's metadata hook, or cml when it finishes the stage, writes ``ss_network_module = networks.lora`` and
keeps this module's name in ``cml_network_module``).

Imported only by the trainer: the class changes stay in that process.
"""

from networks import lora as _lora
from networks.lora import *  # noqa: F403  (train_network.py calls create_network etc. on this module)

from cml.sd_process import patches

patches.patch_lora_module()
create_network_from_weights = _lora.create_network_from_weights  # the patched one, where lora-base-weights applies
