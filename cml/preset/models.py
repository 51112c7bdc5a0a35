"""The preset's Pydantic models: what a run is asked to do, validated (loading lives in cml/preset/load.py).

Defaults are the article's recipe (dim 16, alpha 16, 500 steps, U-Net only,
AdamW8bit, cosine, no warm-up, lr 1e-3, 512 px, batch 1, empty captions).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

Family = Literal["auto", "sd1", "sd2", "sdxl"]
MergeMode = Literal["checkpoint", "in_memory"]
Transform = Literal["grayscale", "sepia", "invert", "blur"]
Precision = Literal["auto", "fp16", "bf16", "fp32"]
Scalar = str | int | float | bool

# optimizer_type as sd-scripts reads it at the pinned commit (library/train_util.py, get_optimizer): its own names, in
# any case (it lowers them); else a torch.optim class, by its exact name; else a full "module.Class" path.
# tests/sdscripts/test_validators.py checks both lists against the pinned code and the installed torch.
SD_SCRIPTS_OPTIMIZERS = (
    "AdamW",
    "AdamW8bit",
    "PagedAdamW",
    "PagedAdamW8bit",
    "PagedAdamW32bit",
    "Lion",
    "Lion8bit",
    "PagedLion8bit",
    "SGDNesterov",
    "SGDNesterov8bit",
    "DAdaptation",
    "DAdaptAdamPreprint",
    "DAdaptAdam",
    "DAdaptAdaGrad",
    "DAdaptAdan",
    "DAdaptAdanIP",
    "DAdaptLion",
    "DAdaptSGD",
    "Prodigy",
    "Adafactor",
    "RAdamScheduleFree",
    "AdamWScheduleFree",
    "SGDScheduleFree",
)
TORCH_OPTIMIZERS = ("ASGD", "Adadelta", "Adagrad", "Adam", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD")
# torch.optim classes that cannot train a LoRA the way sd-scripts calls them.
TORCH_OPTIMIZERS_REFUSED = {
    "LBFGS": "needs a closure at every step, which sd-scripts does not pass",
    "SparseAdam": "takes sparse gradients only",
    "Muon": "takes 2-D parameters only, and a LoRA's conv modules are 4-D",
}
OPTIMIZERS = SD_SCRIPTS_OPTIMIZERS + TORCH_OPTIMIZERS
SAFE_SUFFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: "$" would let a trailing newline through


def _resolve(value: Any, info: ValidationInfo) -> Any:
    """Relative paths resolve against the preset file's folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


def _resolve_each(v: list[Path], info: ValidationInfo) -> list[Path]:
    return [_resolve(p, info) for p in v]


ResolvedPath = Annotated[Path, AfterValidator(_resolve)]
# One path or a list of them, each resolved against the preset's folder.
PathList = Annotated[list[Path], BeforeValidator(_one_or_many), AfterValidator(_resolve_each)]


def unwrap(ann: Any) -> Any:
    """A field's type through Optional[...] and Annotated[...] (the overrides wrap both)."""
    if get_origin(ann) in (Union, UnionType):
        ann = next((a for a in get_args(ann) if a is not type(None)), ann)
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def _numeric(ann: Any) -> tuple[bool, bool]:
    """(a number, a list of numbers) for a field annotation."""
    a = unwrap(ann)
    return a in (int, float), get_origin(a) is list and bool(get_args(a)) and set(get_args(a)) <= {int, float}


class Base(BaseModel):
    # inf and nan are refused everywhere: they would reach sd-scripts (and gui.json, as non-JSON "Infinity")
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            num, lst = _numeric(field.annotation)
            if (num and isinstance(v, bool)) or (lst and isinstance(v, list) and any(isinstance(x, bool) for x in v)):
                raise ValueError("must be a number, not true/false")
        return v


class TrainSettings(Base):
    """Training settings shared by the copy and diff stages."""

    dim: int = Field(16, gt=0, le=1024)
    """LoRA rank (network_dim). The article: 16 is enough for one 512 px image."""
    alpha: float = Field(16.0, gt=0)
    """network_alpha. Equal to dim so the learning rate is not scaled down."""
    steps: int = Field(500, gt=0)
    """max_train_steps."""
    learning_rate: float = Field(1e-3, gt=0)
    """U-Net learning rate."""
    optimizer: str = "AdamW8bit"
    """sd-scripts optimizer_type. 8-bit optimizers fall back to their 32-bit twin without CUDA."""
    scheduler: Literal["cosine", "constant", "linear", "cosine_with_restarts", "polynomial", "constant_with_warmup"] = "cosine"
    """lr_scheduler."""
    warmup_steps: int = Field(0, ge=0)
    """lr_warmup_steps."""
    resolution: int = Field(512, ge=64, le=4096, multiple_of=8)
    """Training resolution in pixels (square bucket area)."""
    batch_size: int = Field(1, gt=0)
    """train_batch_size."""
    caption: str = ""
    """Caption for every image; the article uses none."""
    seed: int = Field(42, ge=0, lt=2**32)
    """Training seed (0 to 2**32 - 1: numpy's seed range, which sd-scripts seeds too)."""
    precision: Precision = "auto"
    """Mixed precision: auto = bf16 on GPUs with compute capability 8.0+ (Ampere and newer), fp16 on older GPUs, fp32 on a CPU."""
    gradient_checkpointing: bool | None = None
    """Trade compute for GPU memory; empty means on for SDXL (sd-scripts' SDXL docs recommend it), off otherwise."""
    torch_compile: bool = False
    """sd-scripts' --torch_compile (torch.compile with inductor): slower first steps while it compiles, faster after;
    its compile cache is kept in cml's cache (torch-compile/), so later stages and runs start warm."""
    extra: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    """Further train_network.py options, written into the training TOML as they are."""

    @field_validator("caption")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("has a line break: sd-scripts reads only a caption file's first line, so the rest would be dropped; write it on one line")
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer_known(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an optimizer, e.g. 'AdamW8bit'")
        if "." in v or v.lower() in {o.lower() for o in SD_SCRIPTS_OPTIMIZERS} or v in TORCH_OPTIMIZERS:
            return v
        if v in TORCH_OPTIMIZERS_REFUSED:
            raise ValueError(f"torch.optim.{v} {TORCH_OPTIMIZERS_REFUSED[v]}: use e.g. 'AdamW8bit' or 'AdamW'")
        exact = next((o for o in TORCH_OPTIMIZERS if o.lower() == v.lower()), None)
        if exact:  # torch.optim classes are looked up by their exact name
            raise ValueError(f"{v!r}: torch.optim's class is spelled {exact!r} (sd-scripts looks it up case-sensitively)")
        close = difflib.get_close_matches(v, OPTIMIZERS, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; sd-scripts knows {', '.join(OPTIMIZERS)}, or a module.Class path"
        raise ValueError(f"{v!r} is not an optimizer sd-scripts knows{hint}")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSettings:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self


# Per-stage and per-target overrides: the same fields, all optional.
TrainOverrides = create_model(  # type: ignore[call-overload]  # fields built at run time from TrainSettings
    "TrainOverrides",
    __base__=Base,
    **{
        name: (Optional[Annotated[(f.annotation, *f.metadata)]] if f.metadata else Optional[f.annotation], Field(None, description=f.description))  # noqa: UP045  # built at run time: X | None does not take a type variable
        for name, f in TrainSettings.model_fields.items()
    },
)


def apply_overrides(settings: TrainSettings, *overrides: BaseModel) -> TrainSettings:
    data = settings.model_dump()
    for o in overrides:
        data.update(o.model_dump(exclude_none=True))
    return TrainSettings.model_validate(data)


Method = Literal["copy_machine", "direct"]


class DirectSettings(Base):
    """The direct method (method = "direct"): the difference A -> B trained in one stage, without a copy LoRA or a
    merge (hako-mikan's ADDifT, on sd-scripts' own trainer: cml/kohya/train.py). Defaults measured on the demo model."""

    steps: int = Field(80, gt=0)
    """Training steps (the peers use 30-100)."""
    multiplier: float = Field(0.25, gt=0, le=1)
    """w: the LoRA trains at +w on B and -w on A, on alternate steps; the saved LoRA is scaled by w, so weight 1 gives
    what +w gave in training."""
    timesteps: tuple[int, int] = (0, 1000)
    """The range timesteps are drawn from, [min, max): each pair of steps takes the next of its tenths 2, 4, 6, 8, 10, in turn."""

    @field_validator("timesteps")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not 0 <= lo < hi <= 1000:
            raise ValueError(f"{list(v)} is not a range of timesteps: give [min, max] with 0 <= min < max <= 1000")
        return v


class Target(Base):
    """One difference LoRA: B images paired with the source images, or a built-in transform of them."""

    images: PathList = Field(default_factory=list)
    """B images, one per source image in the same order; or one folder: B matched to A by file name."""
    suffix: str | None = None
    """B of `x.png` is `x<suffix>.png` in the source folder (e.g. "_gray"); files with a target's suffix are not sources."""
    transform: Transform | None = None
    """Make B from A with a built-in transform instead of images."""
    method: Method | None = None
    """copy_machine (the article: copy LoRA, copy machine model, diff LoRA) or direct; empty means the preset's."""
    symmetric: bool = False
    """Copy machine method: also train the reverse difference (a copy machine of B, a diff LoRA back to A) and combine
    the two into one two-way slider, (L_ab - L_ba) / 2 at twice the rank. The direct method is two-way already."""
    train: TrainOverrides = Field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    """Training settings for this target's stages only."""

    @model_validator(mode="after")
    def _one_way_to_b(self) -> Target:
        given = [k for k, v in (("images", self.images), ("suffix", self.suffix), ("transform", self.transform)) if v]
        if len(given) != 1:
            raise ValueError(
                "give one of 'images' (B files, or a folder of them), 'suffix' (B beside A: x.png -> x<suffix>.png) or "
                f"'transform' (one of grayscale, sepia, invert, blur){'; this target gives ' + ' and '.join(given) if given else ''}"
            )
        if self.suffix is not None and not SAFE_SUFFIX.fullmatch(self.suffix):
            raise ValueError(f"suffix {self.suffix!r} is not a file-name suffix: use 1 to 32 letters, digits, '_', '-' or '.'")
        return self


# gen_img.py's --sampler choices (sd1/sd2 and SDXL alike)
Sampler = Literal[
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
    "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
]  # fmt: skip


class CheckSettings(Base):
    """`cml check`: copy check, weight sweep and metrics (sd-scripts' gen_img.py)."""

    enabled: bool = False
    """Run the check after the diff stages."""
    weights: list[float] = Field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0], min_length=1)
    """Diff LoRA weights of the sweep."""
    seeds: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    """Seeds of the copy check and the sweep."""
    prompts: list[str] = Field(default_factory=lambda: ["", "a photo of a red car in a city street"], min_length=1)
    """Sweep prompts; include prompts unrelated to A, that is where leakage shows."""
    models: PathList = Field(default_factory=list)
    """Models of the sweep besides the copy machine model; empty means the base model (see ``base``)."""
    base: bool = True
    """With ``models`` empty: also sweep on the base model itself (where a real model shows what else the LoRA changes)."""
    copy_check_base: bool = True
    """The copy check also draws the base model alone at its seeds: what the SSIM to A is without the copy LoRA."""
    copy_machine: bool = True
    """Also sweep on the copy machine model (merged file, or base + copy LoRA when merge = "in_memory"): where A -> B shows cleanest."""
    sampling_steps: int = Field(20, gt=0)
    """Sampler steps."""
    guidance_scale: float = Field(7.5, ge=0)
    """Classifier-free guidance (gen_img --scale). At 1 or below gen_img skips the unconditional pass: half the time, and the same images for the empty prompt."""
    batch_size: int = Field(1, gt=0)
    """Images per generator batch (same weight, different seeds); more is faster where memory allows."""
    sampler: Sampler = "ddim"
    """gen_img.py's sampler. Ancestral ones (euler_a) add fresh noise at every step, so the seed's starting noise counts less."""
    resolution: int | None = Field(None, ge=64, multiple_of=8)
    """Image size; empty means the training resolution."""

    @field_validator("weights")
    @classmethod
    def _weights_have_zero(cls, v: list[float]) -> list[float]:
        if 0 not in v:
            raise ValueError(f"{v} lacks 0: the metrics compare every weight with weight 0 (add 0, e.g. [-1, 0, 1])")
        return v

    @field_validator("prompts")
    @classmethod
    def _one_line_each(cls, v: list[str]) -> list[str]:
        """gen_img.py reads one prompt per line (str.splitlines), drops lines starting with '#', and reads ' --' as an
        option: any of these would give images to the wrong prompt, seed and weight without notice."""
        for i, p in enumerate(v):
            if len(f"a{p}b".splitlines()) > 1:
                raise ValueError(f"prompt {i} ({p!r}) holds a line break (\\n, \\r, \\u2028, ...): gen_img.py would split it into two prompts")
            if p.strip().startswith("#"):
                raise ValueError(f"prompt {i} ({p!r}) starts with '#': gen_img.py skips such lines as comments")
            if " --" in f" {p}":
                raise ValueError(f"prompt {i} ({p!r}) contains ' --', which gen_img.py reads as an option")
        return v


class Preset(Base):
    """A whole copy-machine run: one copy stage, one merge, one diff stage per target."""

    name: str = "copy-machine"
    """Run name: the run folder is output_dir/name."""
    base_model: ResolvedPath
    """SD checkpoint (.safetensors, .ckpt) or diffusers folder."""
    family: Family = "auto"
    """Model family; auto detects it from the checkpoint's keys."""
    v_parameterization: bool | None = None
    """v-prediction model (SD2 768-v); empty means detect from metadata, else no."""
    source: Annotated[PathList, Field(min_length=1)]
    """Image A, or several images (a copy machine of a small set), or a folder: its images, sorted by name."""
    targets: dict[str, Target]
    """Named targets; one copy machine serves them all."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    """Settings shared by all training stages."""
    copy_stage: TrainOverrides = Field(default_factory=TrainOverrides, alias="copy")  # type: ignore[valid-type]
    """Overrides for the copy stage."""
    diff: TrainOverrides = Field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    """Overrides for every diff stage."""
    method: Method = "copy_machine"
    """How each target's difference LoRA is made (a target's own ``method`` wins): copy_machine, the article's
    three stages; direct, one stage in a tenth of the steps (see ``direct``)."""
    direct: DirectSettings = Field(default_factory=DirectSettings)
    """Settings of the direct method."""
    merge: MergeMode = "checkpoint"
    """checkpoint: merge_lora.py writes the copy machine model (faithful). in_memory: --base_weights."""
    merge_precision: Literal["auto", "float", "fp16", "bf16"] = "auto"
    """merge_lora.py --precision; auto = float, fp16 for SDXL (float does not fit 24 GiB)."""
    output_dir: ResolvedPath = Path("runs")
    """Folder that holds run folders."""
    allow_resize: bool = False
    """Let B images of another size than A be resized to A's size."""
    resize_to: int | None = Field(None, gt=0)
    """Also write each diff LoRA shrunk to this rank (networks/resize_lora.py)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train; auto = CUDA when available."""
    tokenizer_cache_dir: ResolvedPath | None = None
    """sd-scripts --tokenizer_cache_dir; empty means cml's user cache (offline after the first run)."""
    speedups: bool = True
    """Train with cml's exact speed-ups (cml/kohya/train.py: the text encoder's output computed once, no device sync
    per parameter in 8-bit optimizers, no multiplies by 1.0): the same LoRA as sd-scripts' own train_network.py, bit
    for bit. false runs train_network.py itself."""
    allow_pickle: bool = False
    """Allow a .ckpt base model: sd-scripts unpickles it, which can run code. Prefer .safetensors."""
    baseline: bool = False
    """Also measure the diff stage's early loss against the plain base model (method check)."""
    baseline_steps: int = Field(10, gt=0)
    """Steps of the baseline and of the early-loss window."""
    check: CheckSettings = Field(default_factory=CheckSettings)
    """Copy check, sweep grid and metrics."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not SAFE_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a safe folder name: use 1 to 64 letters, digits, '_', '-' or '.' (not first)")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: dict[str, Target]) -> dict[str, Target]:
        if not v:
            raise ValueError('add at least one target, e.g. [targets.grayscale] transform = "grayscale"')
        seen: dict[str, str] = {}
        for name in v:
            if not SAFE_NAME.fullmatch(name):
                raise ValueError(f"target name {name!r} is not a safe file name: use 1 to 64 letters, digits, '_', '-' or '.' (not first)")
            if name.lower() in seen:
                raise ValueError(f"target names {seen[name.lower()]!r} and {name!r} collide on case-insensitive file systems")
            seen[name.lower()] = name
        return v

    @model_validator(mode="after")
    def _resize_fits(self) -> Preset:
        if self.resize_to is not None:
            for name in self.targets:
                dim = self.diff_settings(name).dim
                if self.resize_to > dim:
                    raise ValueError(f"resize_to ({self.resize_to}) is above targets.{name}'s dim ({dim}): resizing can only lower the rank")
        return self

    @model_validator(mode="after")
    def _pairs(self) -> Preset:
        listed = not any(p.is_dir() for p in self.source)
        for name, t in self.targets.items():
            by_name = any(p.is_dir() for p in t.images)
            if t.images and not by_name and listed and len(t.images) != len(self.source):
                raise ValueError(
                    f"targets.{name}.images has {len(t.images)} image(s) but source has {len(self.source)}: "
                    "give one B image per source image, in the same order (or folders: B matched to A by file name)"
                )
            if by_name and len(t.images) != 1:
                raise ValueError(f"targets.{name}.images: a folder of B images is given alone (B matched to A by file name)")
            if t.suffix is not None and not (len(self.source) == 1 and self.source[0].is_dir()):
                raise ValueError(f"targets.{name}.suffix: B beside A needs source = a folder (x.png and x{t.suffix}.png in it)")
            if t.symmetric and self.target_method(name) == "direct":
                raise ValueError(f"targets.{name}: symmetric is for the copy machine method; the direct method trains both ways already")
        # Overrides stack (train < copy/diff < target): check each stage's result now, not mid-run.
        stages = [("copy", self.copy_settings)] + [(f"targets.{n}.train", lambda n=n: self.diff_settings(n)) for n in self.targets]
        for where, resolve in stages:
            try:
                resolve()
            except ValidationError as e:
                raise ValueError(f"{where}: " + "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())) from None
        return self

    # Resolved settings per stage: one place that says how overrides stack.
    def copy_settings(self) -> TrainSettings:
        return apply_overrides(self.train, self.copy_stage)

    def diff_settings(self, target: str) -> TrainSettings:
        return apply_overrides(self.train, self.diff, self.targets[target].train)

    def target_method(self, target: str) -> str:
        return self.targets[target].method or self.method

    def direct_settings(self, target: str) -> TrainSettings:
        """A direct target's training settings: the diff stage's, with the direct method's steps."""
        explicit = self.targets[target].train.model_dump(exclude_none=True)
        s = self.diff_settings(target)
        return s if "steps" in explicit else s.model_copy(update={"steps": self.direct.steps})

    def to_toml_dict(self) -> dict:
        """The fully resolved preset, itself a valid preset."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return data
