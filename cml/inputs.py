"""Everything a plan is made from, checked before anything runs: images, base model, device."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from cml.checkpoint import ModelInfo, inspect_model, resolve_family
from cml.config import Preset
from cml.device import Gpu, resolve_device
from cml.errors import InputError
from cml.images import TRANSFORMS, LoadedImage, load_image


@dataclass
class TargetInputs:
    name: str
    images: list[Image.Image]  # B, paired with Inputs.source by index
    sha256: list[str]  # of the B files, or "transform:<name>"


@dataclass
class Inputs:
    source: list[LoadedImage]
    targets: dict[str, TargetInputs]
    model: ModelInfo
    family: str
    v_parameterization: bool
    device: str  # "cuda" | "cpu"
    gpu: Gpu | None = None  # what the device probe found (name, memory, compute capability, AdamW8bit)
    notes: list[str] = field(default_factory=list)


def load_inputs(preset: Preset) -> Inputs:
    """Open and check every input; all problems found become one InputError each (first one raised)."""
    notes: list[str] = []
    source = [load_image(p, f"source[{i}]") for i, p in enumerate(preset.source)]
    for s in source:
        notes += [f"{s.path.name}: {n}" for n in s.notes]
    targets: dict[str, TargetInputs] = {}
    for name, t in preset.targets.items():
        if t.transform:
            fn = TRANSFORMS[t.transform]
            targets[name] = TargetInputs(name, [fn(s.image) for s in source], [f"transform:{t.transform}"] * len(source))
            continue
        imgs, hashes = [], []
        for i, (p, a) in enumerate(zip(t.images, source)):
            b = load_image(p, f"targets.{name}.images[{i}]")
            notes += [f"{b.path.name}: {n}" for n in b.notes]
            img = b.image
            if img.size != a.image.size:
                if not preset.allow_resize:
                    raise InputError(
                        f"B is {img.size[0]}x{img.size[1]} but its A ({a.path.name}) is {a.image.size[0]}x{a.image.size[1]}",
                        f"targets.{name}.images[{i}] {p}",
                        "edit B from A without cropping, or set allow_resize = true to resize B to A's size",
                    )
                notes.append(f"{b.path.name}: resized from {img.size[0]}x{img.size[1]} to A's {a.image.size[0]}x{a.image.size[1]}")
                img = img.resize(a.image.size, Image.Resampling.LANCZOS)
            imgs.append(img)
            hashes.append(b.sha256)
        targets[name] = TargetInputs(name, imgs, hashes)
    info = inspect_model(preset.base_model, preset.allow_pickle)
    family = resolve_family(info, preset.family)
    if info.kind == "diffusers" and preset.merge == "checkpoint":
        raise InputError(
            "merge_lora.py merges into single-file checkpoints only, not diffusers folders",
            f"merge (base_model {preset.base_model})",
            "set merge = \"in_memory\", or convert the model to one .safetensors file",
        )
    vpred = preset.v_parameterization
    if vpred is None:
        if family == "sd2" and info.v_parameterization is None:
            # SD2 768-v (v-prediction) and SD2 512-base (epsilon) share every key: guessing trains the wrong objective.
            raise InputError(
                "this SD2 checkpoint does not say whether it predicts v or epsilon (no v_pred key, no modelspec.prediction_type)",
                f"v_parameterization (base_model {preset.base_model})",
                "set v_parameterization = true for 768-v models (e.g. SD 2.1 768), false for 512-base models",
            )
        vpred = bool(info.v_parameterization)
        if vpred and preset.v_parameterization is None:
            notes.append("v-prediction checkpoint (marked in the file): training with v_parameterization")
    # Last: the device probe starts a child Python (seconds); every cheaper check has passed by now.
    device, gpu, device_notes = resolve_device(preset.device)
    return Inputs(source, targets, info, family, vpred, device, gpu, notes + device_notes)
