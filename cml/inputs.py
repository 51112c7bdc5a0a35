"""Everything a plan is made from, checked before anything runs: images, base model, device."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from cml.device import Gpu, resolve_device
from cml.errors import ConfigErrors, InputError
from cml.images import ORIENT, TRANSFORMS, LoadedImage, bucket, load_image, luminance_match, oriented
from cml.model_files import ModelInfo, inspect_model, nonfinite_unet_tensors, resolve_family
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
    family: str
    v_parameterization: bool
    device: str  # "cuda" | "cpu"
    gpu: Gpu | None = None  # what the device probe found (name, memory, compute capability, AdamW8bit)
    notes: list[str] = field(default_factory=list)


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
    if info.kind == "checkpoint":
        bad = nonfinite_unet_tensors(info.path)  # read once with the file's hash, which the plan needs anyway
        if bad:
            raise InputError(
                f"the checkpoint's U-Net holds NaN or Inf in {len(bad)} tensor(s), e.g. {bad[0]}: nothing can train on it",
                f"base_model {preset.base_model}",
                "re-download or re-export the model (it is damaged)",
            )
    for i, m in enumerate(preset.check.models):  # the sweep's models: checked now, not when the check starts
        other = inspect_model(m, preset.allow_pickle, where=f"check.models[{i}] {m}")
        if other.family is not None and other.family != family:
            raise InputError(
                f"the check model is {other.family} but the LoRAs are trained on {family}",
                f"check.models[{i}] {m}",
                "list models of the base model's family",
            )
    if info.kind == "ckpt" and preset.merge == "checkpoint":
        raise InputError(
            "the checkpoint merge is checked against the base's tensors, which cml reads from .safetensors files only",
            f"merge (base_model {preset.base_model})",
            'convert the base to .safetensors, or set merge = "in_memory"',
        )
    if info.kind == "diffusers" and preset.merge == "checkpoint":
        raise InputError(
            "merge_lora.py merges into single-file checkpoints only, not diffusers folders",
            f"merge (base_model {preset.base_model})",
            'set merge = "in_memory", or convert the model to one .safetensors file',
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
