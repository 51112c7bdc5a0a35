"""The ordered stages of a run, each with its inputs, outputs and a fingerprint of what it is made from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cml.errors import InputError
from cml.images import pixel_sha256
from cml.inputs import Inputs
from cml.model_files import model_identity
from cml.preset.models import Preset, TrainSettings

COPY_MACHINE = "copy_machine.safetensors"


class Role(StrEnum):
    """What a stage is in the method."""

    COPY = "copy"  # overfit image A on the base model: the copy LoRA
    MERGE = "merge"  # the copy LoRA merged into the base: the copy machine model
    DIFF = "diff"  # image B on the copy machine model: the diff LoRA, one per target
    BASELINE = "baseline"  # image B on the plain base, briefly: the method check
    RESIZE = "resize"  # a diff LoRA shrunk to a lower rank
    DIRECT = "direct"  # the direct method: A -> B in one stage on the base model (cml/kohya/train.py)
    SLIDER = "slider"  # a two-way slider: (diff LoRA - reverse diff LoRA) / 2, with sd-scripts' LoRA merge


TRAINING = (Role.COPY, Role.DIFF, Role.BASELINE, Role.DIRECT)
# Finished files users keep: replacing one needs --force.
KEPT = (Role.COPY, Role.DIFF, Role.RESIZE, Role.DIRECT, Role.SLIDER)
# The difference LoRAs of a target, as the check sweeps them (a resized one is the same LoRA at a lower rank).
DIFFERENCE = (Role.DIFF, Role.DIRECT, Role.SLIDER)


@dataclass(kw_only=True)
class Stage:
    role: Role
    target: str | None = None  # the target a diff/baseline/resize/direct/slider (or reverse) stage belongs to
    reverse: bool = False  # of a symmetric target's way back: a copy machine of B, a diff LoRA to A
    what: str  # one line for people
    run_dir: Path
    output_name: str  # the final file's name; written only by renaming a checked temporary file
    model: Path  # the model trained against / merged into / resized
    fingerprint: str = ""
    settings: TrainSettings | None = None
    images: list = field(default_factory=list)  # PIL images staged for a train stage
    images_a: list = field(default_factory=list)  # the direct method: each image's A, staged beside it
    base_weights: list[Path] = field(default_factory=list)  # in_memory merge: LoRAs merged before training
    inputs_sha256: dict[str, list[str]] = field(default_factory=dict)  # provenance: A/B file hashes
    depends: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def train(self) -> TrainSettings:
        """The settings of a training stage (copy, diff, baseline)."""
        if self.settings is None:
            raise TypeError(f"{self.name} is not a training stage")
        return self.settings

    @property
    def name(self) -> str:
        """Folder name and --from value: copy, merge, diff-<t>, baseline-<t>, resize-<t>, direct-<t>, slider-<t>, and a
        symmetric target's reverse-copy-<t>, reverse-merge-<t>, reverse-diff-<t>."""
        base = str(self.role) if self.target is None else f"{self.role}-{self.target}"
        return f"reverse-{base}" if self.reverse else base

    @property
    def kind(self) -> str:
        """train | merge | resize: which sd-scripts script runs it."""
        return "train" if self.role in TRAINING else str(self.role)

    @property
    def kept(self) -> bool:
        return self.role in KEPT

    @property
    def trained_against(self) -> str:
        """What the LoRA's weights are relative to (provenance)."""
        if self.role is Role.SLIDER:
            return "copy machine models of A and of B (two-way)"
        if self.role in (Role.DIFF, Role.RESIZE):
            return "copy machine model of B" if self.reverse else "copy machine model"
        return "base model"

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def output(self) -> Path:
        return self.dir / self.output_name

    @property
    def work_dir(self) -> Path:
        """Where sd-scripts writes; the final output is renamed out of here once checked."""
        return self.dir / "work"

    @property
    def images_dir(self) -> Path:
        return self.dir / "images"

    @property
    def images_a_dir(self) -> Path:
        """The direct method: each image's A, under the same file name."""
        return self.dir / "images_a"

    @property
    def record_path(self) -> Path:
        return self.dir / "record.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"


@dataclass
class Plan:
    preset: Preset
    preset_sha256: str
    inputs: Inputs
    run_dir: Path
    stages: list[Stage]
    sd_scripts_commit: str | None

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# Training settings added after runs were made with cml 0.1: at their default they leave a stage's fingerprint as it
# was, so a finished run stays up to date after cml is upgraded; set otherwise, they are part of it.
LATER_SETTINGS: dict[str, object] = {"torch_compile": False}


def settings_id(settings: TrainSettings) -> dict:
    """A stage's training settings as its fingerprint holds them."""
    d = settings.model_dump()
    for key, default in LATER_SETTINGS.items():
        if d.get(key) == default:
            del d[key]
    return d


def resolve_precision(requested: str, inputs: Inputs) -> str:
    """The one precision rule: fp32 | fp16 | bf16 as the stage will run on this device.

    auto: bf16 on GPUs that run it natively (compute capability 8.0+: the fp32 exponent range, so no loss
    scaling and no fp16 overflow), fp16 on older GPUs (half the memory of fp32, tensor cores), fp32 on a
    CPU (no half-precision speed-up there, and fp16 matmuls are slow or missing).
    """
    gpu = inputs.gpu
    if requested == "auto":
        if inputs.device != "cuda":
            return "fp32"
        return "bf16" if gpu is not None and gpu.bf16 else "fp16"
    if requested == "bf16" and gpu is not None and not gpu.bf16:
        raise InputError(
            f'precision = "bf16" but {gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}) has no native bf16',
            "train.precision",
            'use precision = "auto" or "fp16" on GPUs older than compute capability 8.0',
        )
    return requested


def _is_8bit(optimizer: str) -> bool:
    o = optimizer.lower()
    return "8bit" in o or o.startswith("paged")


def effective_settings(s: TrainSettings, inputs: Inputs) -> tuple[TrainSettings, list[str]]:
    """Settings as they will run on this device: precision resolved, 8-bit optimizers only where one step worked."""
    notes = []
    update: dict = {"precision": resolve_precision(s.precision, inputs)}
    if s.gradient_checkpointing is None:
        update["gradient_checkpointing"] = inputs.family == "sdxl"
    opt = s.optimizer
    if _is_8bit(opt):
        gpu = inputs.gpu
        why = None
        if inputs.device != "cuda" or gpu is None:
            why = f"bitsandbytes needs a CUDA GPU ({inputs.device} here)"
        elif gpu.bnb_error:
            why = f"one AdamW8bit step failed on {gpu.name}: {gpu.bnb_error}"
        if why:
            fallback = opt.replace("Paged", "").replace("8bit", "").replace("32bit", "") or "AdamW"
            if fallback.lower() not in ("adamw", "lion", "sgdnesterov"):
                fallback = "AdamW"
            notes.append(f"{opt} cannot run here ({why}): using {fallback} instead (same update rule, 32-bit state: more memory)")
            update["optimizer"] = fallback
    return s.model_copy(update=update), notes


def _copy_machine(
    preset: Preset, inputs: Inputs, run_dir: Path, common: dict, base_id: str, images: list, pixels: list[str], files: list[str], target: str | None
) -> tuple[list[Stage], tuple[Path, str, list[Path], str]]:
    """The copy stage (and its merge) of A, or of a symmetric target's B (target set): the stages, and what a diff
    stage trains against: (model, its fingerprint, LoRAs merged in memory, the stage it depends on)."""
    reverse = target is not None
    copy_s, notes = effective_settings(preset.copy_settings(), inputs)
    what = "image B" if reverse else "image A"
    copy = Stage(
        role=Role.COPY,
        target=target,
        reverse=reverse,
        what=f"copy LoRA: overfit {what} on the base model" + (f" (the way back of '{target}')" if reverse else ""),
        run_dir=run_dir,
        output_name=f"{target}_copy_b.safetensors" if reverse else "copy.safetensors",
        model=preset.base_model,
        settings=copy_s,
        images=images,
        inputs_sha256={"B" if reverse else "A": files},
        notes=notes,
    )
    copy.fingerprint = fingerprint({"stage": copy.name if reverse else "copy", "settings": settings_id(copy_s), "A": pixels, "base": base_id, **common})
    if preset.merge != "checkpoint":
        return [copy], (preset.base_model, copy.fingerprint, [copy.output], copy.name)
    merge = Stage(
        role=Role.MERGE,
        target=target,
        reverse=reverse,
        what=f"merge the copy LoRA into the base: the copy machine model{' of B' if reverse else ''}",
        run_dir=run_dir,
        output_name=f"{target}_{COPY_MACHINE.replace('.safetensors', '_b.safetensors')}" if reverse else COPY_MACHINE,
        model=preset.base_model,
        depends=[copy.name],
    )
    merge.fingerprint = fingerprint(
        {"stage": merge.name if reverse else "merge", "copy": copy.fingerprint, "base": base_id, "precision": merge_precision(preset, inputs), **common}
    )
    return [copy, merge], (merge.output, merge.fingerprint, [], merge.name)


def build_plan(preset: Preset, preset_sha256: str, inputs: Inputs, sd_scripts_commit: str | None, run_dir: Path | None = None) -> Plan:
    run_dir = run_dir if run_dir is not None else preset.output_dir / preset.name
    base_id = model_identity(inputs.model)
    common = {"family": inputs.family, "v": inputs.v_parameterization, "device": inputs.device, "sd_scripts": sd_scripts_commit}
    a_images = [s.image for s in inputs.source]
    a_pixels = [pixel_sha256(i) for i in a_images]
    a_files = [s.sha256 for s in inputs.source]
    stages: list[Stage] = []
    machine = None
    if any(preset.target_method(t) == "copy_machine" for t in inputs.targets):  # a direct target needs no copy machine
        made, machine = _copy_machine(preset, inputs, run_dir, common, base_id, a_images, a_pixels, a_files, None)
        stages += made

    for name, t in inputs.targets.items():
        b_pixels = [pixel_sha256(i) for i in t.images]
        if preset.target_method(name) == "direct":
            s, notes = effective_settings(preset.direct_settings(name), inputs)
            d = preset.direct
            final = Stage(
                role=Role.DIRECT,
                target=name,
                what=f"direct LoRA '{name}': A -> B on the base model, in one stage (the direct method)",
                run_dir=run_dir,
                output_name=f"{name}.safetensors",
                model=preset.base_model,
                settings=s,
                images=t.images,
                images_a=a_images,
                inputs_sha256={"A": a_files, "B": t.sha256},
                notes=notes,
            )
            final.fingerprint = fingerprint(
                {"stage": "direct", "settings": settings_id(s), "direct": d.model_dump(), "A": a_pixels, "B": b_pixels, "base": base_id, **common}
            )
            stages.append(final)
        else:
            assert machine is not None
            model, machine_fp, base_weights, machine_stage = machine
            s, notes = effective_settings(preset.diff_settings(name), inputs)
            final = Stage(
                role=Role.DIFF,
                target=name,
                what=f"diff LoRA '{name}': image B on the copy machine model",
                run_dir=run_dir,
                output_name=f"{name}.safetensors",
                model=model,
                settings=s,
                images=t.images,
                base_weights=base_weights,
                inputs_sha256={"A": a_files, "B": t.sha256},
                depends=[machine_stage],
                notes=notes,
            )
            final.fingerprint = fingerprint(
                {"stage": "diff", "settings": settings_id(s), "B": b_pixels, "machine": machine_fp, "merge": preset.merge, **common}
            )
            stages.append(final)
            if preset.baseline:
                bs = s.model_copy(update={"steps": preset.baseline_steps, "warmup_steps": 0})
                base = Stage(
                    role=Role.BASELINE,
                    target=name,
                    what=f"baseline for '{name}': image B on the plain base (method check)",
                    run_dir=run_dir,
                    output_name=f"{name}_baseline.safetensors",
                    model=preset.base_model,
                    settings=bs,
                    images=t.images,
                    inputs_sha256={"B": t.sha256},
                )
                base.fingerprint = fingerprint({"stage": "baseline", "settings": settings_id(bs), "B": b_pixels, "base": base_id, **common})
                stages.append(base)
            if preset.targets[name].symmetric:
                stages += _slider(preset, inputs, run_dir, common, base_id, name, t, final, s, a_images, a_pixels, a_files, b_pixels)
        if preset.resize_to:
            rs = Stage(
                role=Role.RESIZE,
                target=name,
                what=f"shrink '{name}' to rank {preset.resize_to} (resize_lora.py)",
                run_dir=run_dir,
                output_name=f"{name}_r{preset.resize_to}.safetensors",
                model=final.output,
                depends=[final.name],
                inputs_sha256=final.inputs_sha256,
            )
            rs.fingerprint = fingerprint({"stage": "resize", "of": final.fingerprint, "rank": preset.resize_to})
            stages.append(rs)
    return Plan(preset, preset_sha256, inputs, run_dir, stages, sd_scripts_commit)


def _slider(preset, inputs, run_dir, common, base_id, name, t, diff: Stage, s: TrainSettings, a_images, a_pixels, a_files, b_pixels) -> list[Stage]:
    """A symmetric target's way back (a copy machine of B, a diff LoRA to A), and the two-way slider of both."""
    stages, (model, machine_fp, base_weights, machine_stage) = _copy_machine(preset, inputs, run_dir, common, base_id, t.images, b_pixels, t.sha256, name)
    back = Stage(
        role=Role.DIFF,
        target=name,
        reverse=True,
        what=f"diff LoRA back from '{name}': image A on the copy machine model of B",
        run_dir=run_dir,
        output_name=f"{name}_reverse.safetensors",
        model=model,
        settings=s,
        images=a_images,
        base_weights=base_weights,
        inputs_sha256={"A": a_files, "B": t.sha256},
        depends=[machine_stage],
    )
    back.fingerprint = fingerprint({"stage": back.name, "settings": settings_id(s), "A": a_pixels, "machine": machine_fp, "merge": preset.merge, **common})
    slider = Stage(
        role=Role.SLIDER,
        target=name,
        what=f"two-way slider '{name}': (diff LoRA - diff LoRA back) / 2, at twice the rank (sd-scripts' merge_lora.py --concat)",
        run_dir=run_dir,
        output_name=f"{name}_slider.safetensors",
        model=diff.output,
        depends=[diff.name, back.name],
        inputs_sha256={"A": a_files, "B": t.sha256},
    )
    slider.fingerprint = fingerprint({"stage": "slider", "diff": diff.fingerprint, "back": back.fingerprint})
    return [*stages, back, slider]


def merge_precision(preset: Preset, inputs: Inputs) -> str:
    if preset.merge_precision != "auto":
        return preset.merge_precision
    return "fp16" if inputs.family == "sdxl" else "float"
