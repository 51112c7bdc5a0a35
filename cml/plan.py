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


TRAINING = (Role.COPY, Role.DIFF, Role.BASELINE)
# Finished files users keep: replacing one needs --force.
KEPT = (Role.COPY, Role.DIFF, Role.RESIZE)


@dataclass(kw_only=True)
class Stage:
    role: Role
    target: str | None = None  # the diff target a diff/baseline/resize stage belongs to
    what: str  # one line for people
    run_dir: Path
    output_name: str  # the final file's name; written only by renaming a checked temporary file
    model: Path  # the model trained against / merged into / resized
    fingerprint: str = ""
    settings: TrainSettings | None = None
    images: list = field(default_factory=list)  # PIL images staged for a train stage
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
        """Folder name and --from value: copy, merge, diff-<t>, baseline-<t>, resize-<t>."""
        return str(self.role) if self.target is None else f"{self.role}-{self.target}"

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
        return "copy machine model" if self.role in (Role.DIFF, Role.RESIZE) else "base model"

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


def build_plan(preset: Preset, preset_sha256: str, inputs: Inputs, sd_scripts_commit: str | None, run_dir: Path | None = None) -> Plan:
    run_dir = run_dir if run_dir is not None else preset.output_dir / preset.name
    base_id = model_identity(inputs.model)
    common = {"family": inputs.family, "v": inputs.v_parameterization, "device": inputs.device, "sd_scripts": sd_scripts_commit}
    a_pixels = [pixel_sha256(s.image) for s in inputs.source]
    a_files = [s.sha256 for s in inputs.source]
    stages: list[Stage] = []

    copy_s, copy_notes = effective_settings(preset.copy_settings(), inputs)
    copy = Stage(
        role=Role.COPY,
        what="copy LoRA: overfit image A on the base model",
        run_dir=run_dir,
        output_name="copy.safetensors",
        model=preset.base_model,
        settings=copy_s,
        images=[s.image for s in inputs.source],
        inputs_sha256={"A": a_files},
        notes=copy_notes,
    )
    copy.fingerprint = fingerprint({"stage": "copy", "settings": copy_s.model_dump(), "A": a_pixels, "base": base_id, **common})
    stages.append(copy)

    if preset.merge == "checkpoint":
        merge = Stage(
            role=Role.MERGE,
            what="merge the copy LoRA into the base: the copy machine model",
            run_dir=run_dir,
            output_name=COPY_MACHINE,
            model=preset.base_model,
            depends=[copy.name],
        )
        merge.fingerprint = fingerprint({"stage": "merge", "copy": copy.fingerprint, "base": base_id, "precision": merge_precision(preset, inputs), **common})
        stages.append(merge)
        machine, machine_fp, base_weights, machine_stage = merge.output, merge.fingerprint, [], merge.name
    else:
        machine, machine_fp, base_weights, machine_stage = preset.base_model, copy.fingerprint, [copy.output], copy.name

    for name, t in inputs.targets.items():
        s, notes = effective_settings(preset.diff_settings(name), inputs)
        b_pixels = [pixel_sha256(i) for i in t.images]
        diff = Stage(
            role=Role.DIFF,
            target=name,
            what=f"diff LoRA '{name}': image B on the copy machine model",
            run_dir=run_dir,
            output_name=f"{name}.safetensors",
            model=machine,
            settings=s,
            images=t.images,
            base_weights=base_weights,
            inputs_sha256={"A": a_files, "B": t.sha256},
            depends=[machine_stage],
            notes=notes,
        )
        diff.fingerprint = fingerprint({"stage": "diff", "settings": s.model_dump(), "B": b_pixels, "machine": machine_fp, "merge": preset.merge, **common})
        stages.append(diff)
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
            base.fingerprint = fingerprint({"stage": "baseline", "settings": bs.model_dump(), "B": b_pixels, "base": base_id, **common})
            stages.append(base)
        if preset.resize_to:
            rs = Stage(
                role=Role.RESIZE,
                target=name,
                what=f"shrink '{name}' to rank {preset.resize_to} (resize_lora.py)",
                run_dir=run_dir,
                output_name=f"{name}_r{preset.resize_to}.safetensors",
                model=diff.output,
                depends=[diff.name],
                inputs_sha256=diff.inputs_sha256,
            )
            rs.fingerprint = fingerprint({"stage": "resize", "diff": diff.fingerprint, "rank": preset.resize_to})
            stages.append(rs)
    return Plan(preset, preset_sha256, inputs, run_dir, stages, sd_scripts_commit)


def merge_precision(preset: Preset, inputs: Inputs) -> str:
    if preset.merge_precision != "auto":
        return preset.merge_precision
    return "fp16" if inputs.family == "sdxl" else "float"
