"""A run's plan as data: the ordered stages, each with its inputs, its output and a fingerprint of what it is made
from. Built by cml/stages.py under the rules of cml/policy.py; nothing here reads the disk or decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cml.inputs import Inputs
from cml.preset.models import Preset, TrainSettings

COPY_MACHINE = "copy_machine.safetensors"


class Role(StrEnum):
    """What a stage is in the method."""

    COPY = "copy"  # overfit image A on the base model: the copy LoRA
    MERGE = "merge"  # the copy LoRA merged into the base: the copy machine model
    DIFF = "diff"  # image B on the copy machine model: the diff LoRA, one per target
    NAIVE = "naive"  # image B on the plain base with the diff stage's recipe: the naive LoRA the check compares against
    RESIZE = "resize"  # a diff LoRA shrunk to a lower rank
    COMFY = "comfy"  # a difference LoRA converted for ComfyUI by sd-scripts' converter (Anima, HunyuanImage)
    AVERAGE = "average"  # a target's per-pair diff LoRAs averaged into one (each_pair), with sd-scripts' LoRA merge
    DIRECT = "direct"  # the direct method: A -> B in one stage on the base model (cml/sd_process/train.py)
    SLIDER = "slider"  # a two-way slider: (diff LoRA - reverse diff LoRA) / 2, with sd-scripts' LoRA merge


TRAINING = (Role.COPY, Role.DIFF, Role.NAIVE, Role.DIRECT)
# Finished work: replacing one of these files needs --force.
PROTECTED = (Role.COPY, Role.DIFF, Role.RESIZE, Role.DIRECT, Role.SLIDER, Role.NAIVE, Role.AVERAGE)
# What a run gives its user, and `cml run` lists at the end: each target's difference LoRAs (not the way back's).
RESULTS = (Role.DIFF, Role.DIRECT, Role.SLIDER, Role.RESIZE, Role.COMFY, Role.AVERAGE)
# The LoRAs the check sweeps: each target's difference LoRAs, and the naive one beside them (a resized one is the
# same LoRA at a lower rank).
SWEPT = (Role.DIFF, Role.DIRECT, Role.SLIDER, Role.NAIVE, Role.AVERAGE)


@dataclass(kw_only=True)
class Stage:
    role: Role
    target: str | None = None  # the target a diff/baseline/resize/direct/slider (or reverse) stage belongs to
    reverse: bool = False  # of a symmetric target's way back: a copy machine of B, a diff LoRA to A
    pair: int | None = None  # of a target trained pair by pair (each_pair): the pair's number, from 1
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
        """The settings of a training stage (copy, diff, naive, direct)."""
        if self.settings is None:
            raise TypeError(f"{self.name} is not a training stage")
        return self.settings

    @property
    def name(self) -> str:
        """Folder name and --from value: copy, merge, diff-<t>, naive-<t>, resize-<t>, direct-<t>, slider-<t>, and a
        symmetric target's reverse-copy-<t>, reverse-merge-<t>, reverse-diff-<t>."""
        base = str(self.role) if self.target is None else f"{self.role}-{self.target}"
        if self.pair is not None:
            base += f"-p{self.pair}"
        return f"reverse-{base}" if self.reverse else base

    @property
    def kind(self) -> str:
        """train | merge | resize: which sd-scripts script runs it."""
        return "train" if self.role in TRAINING else str(self.role)

    @property
    def protected(self) -> bool:
        """Finished work: replacing it needs --force."""
        return self.role in PROTECTED

    @property
    def result(self) -> bool:
        """A file the run gives its user (RESULTS), not a step on the way."""
        return self.role in RESULTS and not self.reverse and self.pair is None

    @property
    def swept(self) -> bool:
        return self.role in SWEPT and not self.reverse and self.pair is None

    @property
    def sweep_key(self) -> str:
        """The check's name of a swept LoRA: its output file's stem (diff and direct: the target's name; <t>_slider;
        <t>_naive), unique as output files are."""
        return self.output.stem

    @property
    def trained_against(self) -> str:
        """What the LoRA's weights are relative to (provenance)."""
        if self.role is Role.SLIDER:
            return "copy machine models of A and of B (two-way)"
        if self.role is Role.AVERAGE:
            return "each pair's own copy machine model (the mean of the pairs' diff LoRAs)"
        if self.role in (Role.DIFF, Role.RESIZE, Role.COMFY):
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
