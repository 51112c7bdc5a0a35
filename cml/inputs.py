"""Everything a plan is made from, checked before anything runs: images, base model, device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cml.device import Gpu, resolve_device
from cml.errors import ConfigErrors, InputError
from cml.families import DIT, FAMILIES
from cml.images import ORIENT, TRANSFORMS, LoadedImage, bucket, load_image, luminance_match, oriented
from cml.model_files import ModelInfo, inspect_model, inspect_part, nonfinite_tensors_of, resolve_family
from cml.pairs import pair
from cml.preset.models import Preset


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
    family: str  # a key of cml/families.py's FAMILIES
    v_parameterization: bool
    device: str  # "cuda" | "cpu"
    gpu: Gpu | None = None  # what the device probe found (name, memory, compute capability, AdamW8bit)
    notes: list[str] = field(default_factory=list)
    model_files: dict[str, Path] = field(default_factory=dict)  # [model_files], checked: the family's other files


def check_buckets(preset: Preset, source: list[LoadedImage]) -> None:
    """Refuse, all at once, the images sd-scripts' bucketing would crash on (ZeroDivisionError in select_bucket)."""
    resolutions = sorted({preset.copy_settings().resolution, *(preset.diff_settings(t).resolution for t in preset.targets)})
    bad = []
    for i, s in enumerate(source):
        w, h = s.image.size
        for res in resolutions:
            if bucket(w, h, res) is None:
                bad.append(f"source[{i}] {s.path.name} ({w}x{h}) at {res} px")
    if bad:
        raise InputError(
            f"sd-scripts cannot bucket {'; '.join(bad)}: its aspect ratio leaves a side under 64 px at that training area",
            "source",
            "crop the image closer to square, or raise train.resolution (B images are checked with their A)",
        )


def align_b(a: LoadedImage, b: LoadedImage, where: str) -> tuple[Image.Image, str | None]:
    """B upright the way A is. When their EXIF orientation tags disagree (an editor that kept A's raw pixels and
    dropped the tag, or one that applied it), take the reading of B whose luminance layout matches A's."""
    if a.orientation == b.orientation or (a.orientation not in ORIENT and b.orientation not in ORIENT):
        return b.image, None
    stored = b.raw if b.raw is not None else b.image
    candidates = {
        f"its own orientation tag ({b.orientation})": b.image,
        f"A's orientation tag ({a.orientation})": oriented(stored, a.orientation),
    }
    scores = sorted(((luminance_match(a.image, img), how, img) for how, img in candidates.items()), key=lambda x: x[0], reverse=True)
    (best, how, img), (second, _, _) = scores[0], scores[1]
    if best < 0.5 or best - second < 0.1:
        raise InputError(
            f"B's EXIF orientation ({b.orientation}) differs from A's ({a.orientation}) and neither reading of B matches A "
            f"(luminance correlation {scores[0][0]:.2f} vs {scores[1][0]:.2f})",
            where,
            "save B upright as A shows, with the same orientation as A",
        )
    note = f"{b.path.name}: EXIF orientation differs from A's ({b.orientation} vs {a.orientation}); read with {how}, which matches A (luminance correlation {best:.2f} vs {second:.2f})"
    return img, note


def load_inputs(preset: Preset) -> Inputs:
    """Open and check every input; every bad image is named, all at once."""
    notes: list[str] = []
    errors: list[InputError] = []

    def load(p, role) -> LoadedImage | None:
        try:
            return load_image(p, role)
        except InputError as e:
            errors.append(e)
            return None

    pairing = pair(preset)  # A and each target's B, by order or by file name: every mismatch named at once
    errors += [InputError(problem) for problem in pairing.problems]
    loaded = [load(p, f"source[{i}]") for i, p in enumerate(pairing.sources)]
    seen: dict[str, int] = {}
    for i, s in enumerate(loaded):
        if s is None:
            continue
        notes += [f"{s.path.name}: {n}" for n in s.notes]
        if s.sha256 in seen:
            notes.append(f"source[{i}] {s.path.name} is the same image as source[{seen[s.sha256]}]: listed twice")
        seen.setdefault(s.sha256, i)
    targets: dict[str, TargetInputs] = {}
    for name, t in preset.targets.items():
        if t.transform:
            if not errors:
                fn = TRANSFORMS[t.transform]
                targets[name] = TargetInputs(name, [fn(s.image) for s in loaded if s], [f"transform:{t.transform}"] * len(loaded))
            continue
        imgs, hashes = [], []
        for i, (p, a) in enumerate(zip(pairing.b[name], loaded)):
            if p is None:  # pair() found none: named in its problems
                continue
            where = f"targets.{name}.images[{i}] {p}"
            b = load(p, f"targets.{name}.images[{i}]")
            if b is None or a is None:
                continue
            notes += [f"{b.path.name}: {n}" for n in b.notes]
            try:
                img, note = align_b(a, b, where)
            except InputError as e:
                errors.append(e)
                continue
            if note:
                notes.append(note)
            if img.size != a.image.size:
                if not preset.allow_resize:
                    errors.append(
                        InputError(
                            f"B is {img.size[0]}x{img.size[1]} but its A ({a.path.name}) is {a.image.size[0]}x{a.image.size[1]}",
                            where,
                            "edit B from A without cropping, or set allow_resize = true to resize B to A's size",
                        )
                    )
                    continue
                notes.append(f"{b.path.name}: resized from {img.size[0]}x{img.size[1]} to A's {a.image.size[0]}x{a.image.size[1]}")
                img = img.resize(a.image.size, Image.Resampling.LANCZOS)
            if img.tobytes() == a.image.tobytes():
                notes.append(f"warning: targets.{name}.images[{i}] {b.path.name} is identical to its A: the diff LoRA would learn nothing")
            imgs.append(img)
            hashes.append(b.sha256)
        targets[name] = TargetInputs(name, imgs, hashes)
    if pairing.problems:
        errors.append(InputError("every A needs its B", None, "match them by file name, or list them in the same order"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors([e.line() for e in errors])
    source = [s for s in loaded if s is not None]
    check_buckets(preset, source)
    info = inspect_model(preset.base_model, preset.allow_pickle)
    family = resolve_family(info, preset.family)
    check_family(preset, info, family)
    if info.kind == "checkpoint":
        prefix = "model.diffusion_model." if info.prefixed else FAMILIES[family].denoiser_prefix
        bad = nonfinite_tensors_of(info.path, prefix)  # read once with the file's hash, which the plan needs anyway
        if bad:
            raise InputError(
                f"the checkpoint's {'DiT' if family in DIT else 'U-Net'} holds NaN or Inf in {len(bad)} tensor(s), e.g. {bad[0]}: nothing can train on it",
                f"base_model {preset.base_model}",
                "re-download or re-export the model (it is damaged)",
            )
    for i, m in enumerate(preset.check.models):  # the sweep's models: checked now, not when the check starts
        other = inspect_model(m, preset.allow_pickle, where=f"check.models[{i}] {m}")
        if other.family is not None and other.family != family:
            raise InputError(
                f"the check model is {FAMILIES[other.family].title} but the LoRAs are trained on {FAMILIES[family].title}",
                f"check.models[{i}] {m}",
                "list models of the base model's family",
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
    return Inputs(source, targets, info, family, vpred, device, gpu, notes + device_notes, preset.model_files.given())


def check_family(preset: Preset, info: ModelInfo, family: str) -> None:
    """What the family (cml/families.py) needs of the run, all at once: its model files, a merge route it has, a
    method and a slider it supports."""
    f = FAMILIES[family]
    where = f"base_model {preset.base_model}"
    lines = []
    given = preset.model_files.given()
    for key in given:
        if key not in f.files:
            takes = ", ".join(f.files) or "none"
            lines.append(f"model_files.{key}: {f.title} takes no {key} (its files: {takes}) -- remove it, or check the base model's family")
    for key in f.required_files:
        if key not in given:
            lines.append(f'model_files.{key}: {f.title} needs its {key} file -- set model_files.{key} = "...safetensors"')
    for key, path in given.items():
        if key in f.files:
            lines += inspect_part(key, path)
    if info.kind == "ckpt" and preset.merge == "checkpoint":
        lines.append(
            f'merge ({where}): the checkpoint merge is checked against the base\'s tensors, which cml reads from .safetensors files only -- convert the base to .safetensors, or set merge = "in_memory"'
        )
    if info.kind == "diffusers" and preset.merge == "checkpoint":
        lines.append(
            f'merge ({where}): merge_lora.py merges into single-file checkpoints only, not diffusers folders -- set merge = "in_memory", or convert the model to one .safetensors file'
        )
    copy_machine = [n for n in preset.targets if preset.target_method(n) == "copy_machine"]
    if copy_machine and preset.merge not in f.merges:
        lines.append(f'merge: sd-scripts has no way to write a {f.title} copy machine model (merge = "{preset.merge}") -- set merge = "in_memory"')
    if copy_machine and preset.merge == "checkpoint" and info.prefixed:
        lines.append(
            f"merge: {where}'s keys carry the model.diffusion_model. prefix, which {f.merge_script} matches to no LoRA key: "
            'the merged model would equal the base -- set merge = "in_memory", or save the DiT without the prefix'
        )
    for name in preset.targets:
        if preset.target_method(name) == "direct" and not f.direct:
            lines.append(
                f'targets.{name}: the direct method wraps the DDPM step of SD1/SD2/SDXL; {f.title} trains by flow matching, which it does not -- use method = "copy_machine"'
            )
        if getattr(preset.targets[name], "symmetric", False) and f.lora_merge_script is None:
            lines.append(
                f"targets.{name}.symmetric: sd-scripts has no LoRA-into-LoRA merge for {f.title}, which the two-way slider needs -- set symmetric = false"
            )
    if preset.resize_to is not None and family not in ("sd1", "sd2", "sdxl"):
        lines.append(f"resize_to: networks/resize_lora.py resizes SD LoRAs; {f.title}'s are not -- remove resize_to")
    if preset.v_parameterization and family not in ("sd1", "sd2", "sdxl"):
        lines.append(f"v_parameterization: {f.title} trains by flow matching, not v-prediction -- remove it")
    if len(lines) == 1:
        raise InputError(lines[0])
    if lines:
        raise ConfigErrors(lines)
