"""SD1/SD2 checkpoints loaded without first drawing random weights that the checkpoint then overwrites.

sd-scripts builds each model (U-Net, VAE, text encoder) with its layers' random initialisation, then loads the
checkpoint over every parameter (``model_util.load_models_from_stable_diffusion_checkpoint``, strict loads: a
parameter left out fails the load). The draws cost seconds on a CPU (~7 s for SD1.5's U-Net on 2 cores) and
change nothing in the loaded model; they only move torch's CPU random generator on. transformers'
``no_init_weights`` skips them.

- **Trainers** (``exact=True``): the LoRA's random start and every step's noise come from that generator, after the
  load. So the state the draws leave is learnt once and kept in cml's cache (``init-rng/``, the folder ``CML_INIT_RNG_DIR`` names; cml/cache.py), keyed on the state
  before the load and on what decides the draws (torch, transformers and diffusers versions, sd-scripts' model
  code, the load's arguments); a load whose key is known skips the draws and sets that state: the same LoRA, bit
  for bit (tests/sdscripts/test_speedups.py). A first load runs as sd-scripts' does and is learnt from only when
  nothing but torch's CPU generator moved.
- **The generator** (``exact=False``, cml/sd_process/gen.py): gen_img.py seeds each image's noise itself
  (``torch.manual_seed(seed)`` per image), so the draws never reach an image.

SDXL's loader already builds its models empty (``init_empty_weights``): nothing to skip there.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

RNG_CACHE_VERSION = "1"
SAY = "cml: model load:"  # in the stage's log


def _rng_key(v2: bool, device: Any, linear_projection: bool) -> str:
    """What decides the draws a load makes from a given generator state."""
    import diffusers
    import torch
    import transformers
    from library import model_util, original_unet

    h = hashlib.sha256(RNG_CACHE_VERSION.encode())
    h.update(bytes(torch.get_rng_state().numpy()))
    for part in (torch.__version__, transformers.__version__, diffusers.__version__, str(v2), str(device), str(linear_projection)):
        h.update(b"|" + part.encode())
    for module in (model_util, original_unet):  # sd-scripts' model code, whichever commit it is
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:32]


def _other_rngs() -> tuple:
    """numpy's and CUDA's generators: a load that moves them is not learnt from. (Python's ``random`` moves during a
    load too, by sd-scripts' log handler, rich: a random link id per styled log record. Both paths log the same
    records, so it moves the same way on both.)"""
    import pickle

    import numpy as np
    import torch

    cuda = tuple(bytes(s.numpy()) for s in torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
    return pickle.dumps(np.random.get_state()), cuda


def _write(path: Path, data: bytes) -> None:
    """Written beside, then renamed: a reader never sees half a state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def without_init(load, exact: bool):
    """``load`` (sd-scripts' loader) without the random draws (see the module's docstring); installed by
    cml/sd_process/patches.py once its check passes."""
    import torch
    from transformers.modeling_utils import no_init_weights

    cache = Path(os.environ["CML_INIT_RNG_DIR"]) if os.environ.get("CML_INIT_RNG_DIR") else None

    def load_without_init(v2, ckpt_path, device="cpu", dtype=None, unet_use_linear_projection_in_v2=True):
        args = (v2, ckpt_path, device, dtype, unet_use_linear_projection_in_v2)
        if not exact:
            with no_init_weights():
                models = load(*args)
            print(f"{SAY} no random initialisation drawn (the generator seeds each image itself)", flush=True)
            return models
        if cache is None:  # nowhere to learn the generator's state: sd-scripts' own load
            return load(*args)
        file = cache / f"{_rng_key(v2, device, unet_use_linear_projection_in_v2)}.bin"
        after = file.read_bytes() if file.is_file() else b""
        if len(after) == torch.get_rng_state().numel():  # a damaged file is no state: the draws are made
            with no_init_weights():
                models = load(*args)
            torch.set_rng_state(torch.frombuffer(bytearray(after), dtype=torch.uint8))
            print(f"{SAY} no random initialisation drawn; torch's generator set where the draws leave it ({file})", flush=True)
            return models
        others = _other_rngs()
        models = load(*args)
        if _other_rngs() == others:  # only torch's CPU generator moved: its state after is all the load leaves
            try:
                _write(file, bytes(torch.get_rng_state().numpy()))
                print(f"{SAY} random initialisation drawn; where it leaves torch's generator is kept for the next load ({file})", flush=True)
            except OSError:
                pass  # a cache we cannot write only costs time
        return models

    return load_without_init
