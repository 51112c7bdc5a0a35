"""The preset's Pydantic models: what a run is asked to do, validated (loading, ``--set`` and errors live in
cml/preset/load.py; older versions are brought up to this one by cml/preset/migrations.py). Field docstrings are the
preset reference (docs/presets.md, `cml presets --reference`).

Defaults are the article's recipe (dim 16, alpha 16, 500 steps, U-Net only, AdamW8bit, cosine, no warm-up, lr 1e-3,
512 px, batch 1, empty captions). Validators never read the disk: what needs files (pairing A and B, the model's
family) is checked by cml/pairs.py and cml/inputs.py.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PRESET_VERSION = 2  # cml/preset/migrations.py brings older presets up to it
Family = Literal["auto", "sd1", "sd2", "sdxl", "flux", "chroma", "sd3", "lumina", "anima", "hunyuan_image"]
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
    """Relative paths resolve against the preset file's folder (given by the loader: no disk is read here)."""
    if value is None:
        return None
    try:
        p = Path(value).expanduser()
    except RuntimeError as e:  # "~nosuchuser/..."
        raise ValueError(f"{value!r}: {e}; write the path out in full") from None
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
# Numbers as TOML writes them: true/false are not numbers, and 2.0 is not a count (strict types refuse both).
Dim = Annotated[StrictInt, Field(gt=0, le=1024)]
Alpha = Annotated[StrictFloat, Field(gt=0)]
Steps = Annotated[StrictInt, Field(gt=0)]
Rate = Annotated[StrictFloat, Field(gt=0)]
Count = Annotated[StrictInt, Field(ge=0)]
Resolution = Annotated[StrictInt, Field(ge=64, le=4096, multiple_of=8)]
Batch = Annotated[StrictInt, Field(gt=0, le=1024)]
Seed = Annotated[StrictInt, Field(ge=0, lt=2**32)]
Scheduler = Literal["cosine", "constant", "linear", "cosine_with_restarts", "polynomial", "constant_with_warmup"]
INT64 = 2**63


def unwrap(ann: Any) -> Any:
    """A field's type through Optional[...] and Annotated[...]."""
    if get_origin(ann) in (Union, UnionType):
        ann = next((a for a in get_args(ann) if a is not type(None)), ann)
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


class Base(BaseModel):
    # inf and nan are refused everywhere: they would reach sd-scripts (and gui.json, as non-JSON "Infinity")
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True, allow_inf_nan=False)


class TrainSettings(Base):
    """Training settings shared by every training stage (`[train]`); `[copy]`, `[diff]` and a target's `train` override them."""

    dim: Dim = 16
    """LoRA rank (network_dim). The article: 16 is enough for one 512 px image."""
    alpha: Alpha = 16.0
    """network_alpha. Equal to dim so the learning rate is not scaled down."""
    steps: Steps = 500
    """max_train_steps."""
    learning_rate: Rate = 1e-3
    """U-Net (or DiT) learning rate."""
    optimizer: str = "AdamW8bit"
    """sd-scripts optimizer_type. 8-bit optimizers fall back to their 32-bit twin without CUDA."""
    scheduler: Scheduler = "cosine"
    """lr_scheduler."""
    warmup_steps: Count = 0
    """lr_warmup_steps."""
    resolution: Resolution = 512
    """Training resolution in pixels (square bucket area)."""
    batch_size: Batch = 1
    """train_batch_size. Above 1 with one image, its repeats fill the batch (sd-scripts batches within an epoch)."""
    caption: str = ""
    """Caption for every image; the article uses none (one line)."""
    seed: Seed = 42
    """Training seed (0 to 2**32 - 1: numpy's seed range, which sd-scripts seeds too)."""
    precision: Precision = "auto"
    """Mixed precision: auto = bf16 on GPUs with compute capability 8.0+ (Ampere and newer), fp16 on older GPUs, fp32 on a CPU."""
    gradient_checkpointing: StrictBool | None = None
    """Trade compute for GPU memory; empty means on for SDXL and the DiT families (sd-scripts' docs recommend it), off otherwise."""
    torch_compile: StrictBool = False
    """sd-scripts' --torch_compile (torch.compile with inductor): slower first steps while it compiles, faster after;
    its compile cache is kept in cml's cache (torch-compile/), so later stages and runs start warm."""
    extra: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    """Further trainer options (train_network.py's, or the family's trainer's), written into the training TOML as they
    are, e.g. { noise_offset = 0.05 }; files they make (sample images, intermediate saves) are kept in <stage>/extra/."""

    @field_validator("caption")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("has a line break: sd-scripts reads only a caption file's first line, so the rest would be dropped; write it on one line")
        return v

    @field_validator("extra")
    @classmethod
    def _toml_integers(cls, v: dict) -> dict:
        for key, value in v.items():
            for x in value if isinstance(value, list) else [value]:
                if isinstance(x, int) and not isinstance(x, bool) and not -INT64 <= x < INT64:
                    raise ValueError(f"{key} = {x} is beyond 64 bits: TOML (and sd-scripts) cannot read it back")
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


class TrainOverrides(Base):
    """Overrides of `[train]` for one stage or target: the same keys, each optional (tests/unit/test_config.py keeps
    the two classes' keys equal)."""

    dim: Dim | None = None
    alpha: Alpha | None = None
    steps: Steps | None = None
    learning_rate: Rate | None = None
    optimizer: str | None = None
    scheduler: Scheduler | None = None
    warmup_steps: Count | None = None
    resolution: Resolution | None = None
    batch_size: Batch | None = None
    caption: str | None = None
    seed: Seed | None = None
    precision: Precision | None = None
    gradient_checkpointing: StrictBool | None = None
    torch_compile: StrictBool | None = None
    extra: dict[str, Scalar | list[Scalar]] | None = None


def apply_overrides(settings: TrainSettings, *overrides: BaseModel) -> TrainSettings:
    data = settings.model_dump()
    for o in overrides:
        data.update(o.model_dump(exclude_none=True))
    return TrainSettings.model_validate(data)


Method = Literal["copy_machine", "direct"]
DIRECT_STEPS = 80


class TargetBase(Base):
    """What every target has: its B (images, a suffix, or a built-in transform) and its own training settings."""

    images: PathList = Field(default_factory=list)
    """B images, one per source image in the same order; or one folder: B matched to A by file name."""
    suffix: str | None = None
    """B of `x.png` is `x<suffix>.png` in the source folder (e.g. "_gray"); files with a target's suffix are not sources."""
    transform: Transform | None = None
    """Make B from A with a built-in transform instead of images."""
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    """Training settings for this target's stages only."""

    @model_validator(mode="after")
    def _one_way_to_b(self) -> TargetBase:
        given = [k for k, v in (("images", self.images), ("suffix", self.suffix), ("transform", self.transform)) if v]
        if len(given) != 1:
            raise ValueError(
                "give one of 'images' (B files, or a folder of them), 'suffix' (B beside A: x.png -> x<suffix>.png) or "
                f"'transform' (one of grayscale, sepia, invert, blur){'; this target gives ' + ' and '.join(given) if given else ''}"
            )
        if self.suffix is not None and not SAFE_SUFFIX.fullmatch(self.suffix):
            raise ValueError(f"suffix {self.suffix!r} is not a file-name suffix: use 1 to 32 letters, digits, '_', '-' or '.'")
        return self


class CopyMachineTarget(TargetBase):
    """A target made the article's way (method = "copy_machine", the default): a diff LoRA of B trained against the
    copy machine model of A."""

    method: Literal["copy_machine"] = "copy_machine"
    """How this target's difference LoRA is made: copy_machine (the article: copy LoRA, copy machine model, diff LoRA)
    or direct (one stage on the base model, see the direct target's keys)."""
    symmetric: StrictBool = False
    """Also train the way back (a copy machine of B, a diff LoRA back to A) and combine the two into one two-way
    slider, (L_ab - L_ba) / 2 at twice the rank."""
    each_pair: StrictBool = False
    """With several A images: one copy machine and one diff LoRA per pair (A_i, B_i), averaged into one LoRA by
    sd-scripts' merge_lora.py --concat (exact: the mean of the pairs' changes, at n times the rank; resize_to shrinks it
    with resize_lora.py's SVD). Off: one copy machine of every A, one diff LoRA of every B (the article's way)."""


class DirectTarget(TargetBase):
    """A target made by the direct method (method = "direct"): the difference A -> B trained in one stage on the base
    model, without a copy LoRA or a merge (hako-mikan's ADDifT on sd-scripts' own trainer). Two-way by construction.
    Defaults measured on the demo model."""

    method: Literal["direct"]
    """direct: see above."""
    steps: Steps = DIRECT_STEPS
    """Training steps of the direct stage (the peers use 30-100)."""
    multiplier: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.25
    """w: the LoRA trains at +w on B and -w on A, on alternate steps; the saved LoRA is scaled by w, so weight 1 gives
    what +w gave in training."""
    timesteps: tuple[StrictInt, StrictInt] = (0, 1000)
    """The range timesteps are drawn from, [min, max): each pair of steps takes the next of min + (max - min) k / 10,
    k = 1, 3, 5, 7, 9, in turn (as train_diff2 does)."""

    @field_validator("timesteps")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not 0 <= lo < hi <= 1000:
            raise ValueError(f"{list(v)} is not a range of timesteps: give [min, max] with 0 <= min < max <= 1000")
        return v

    @model_validator(mode="after")
    def _steps_here(self) -> DirectTarget:
        if self.train.steps is not None:
            raise ValueError("a direct target's steps are its own key: write steps = N, not train.steps")
        return self

    def direct_id(self) -> dict:
        """The direct method's settings as the stage's fingerprint holds them."""
        return {"steps": self.steps, "multiplier": self.multiplier, "timesteps": list(self.timesteps)}


def _method_of(v: Any) -> str:
    return str(v.get("method", "copy_machine")) if isinstance(v, dict) else str(getattr(v, "method", "copy_machine"))


Target = Annotated[
    Annotated[CopyMachineTarget, Tag("copy_machine")] | Annotated[DirectTarget, Tag("direct")],
    Discriminator(_method_of, custom_error_type="method", custom_error_message="method must be 'copy_machine' or 'direct'"),
]


# gen_img.py's --sampler choices (sd1/sd2 and SDXL alike)
Sampler = Literal[
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
    "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
]  # fmt: skip
# A weight gen_img.py's "--am" reads as written: it parses "[\d.\-,]+" (no exponent), so 1e-05 would become 1.
GEN_IMG_WEIGHT = re.compile(r"-?\d+(\.\d+)?")


class CheckSettings(Base):
    """`cml check`: copy check, weight sweep and metrics (sd-scripts' generator)."""

    enabled: StrictBool = False
    """Run the check after the last stage."""
    weights: Annotated[list[Annotated[StrictFloat, Field(ge=-100, le=100)]], Field(min_length=1)] = Field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])
    """Difference LoRA weights of the sweep (-100 to 100, at most 6 decimals: gen_img reads them without exponents)."""
    seeds: Annotated[list[Seed], Field(min_length=1)] = Field(default_factory=lambda: [1, 2])
    """Seeds of the copy check and the sweep (0 to 2**32 - 1)."""
    prompts: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["", "a photo of a red car in a city street"])
    """Sweep prompts; include prompts unrelated to A, that is where leakage shows."""
    models: PathList = Field(default_factory=list)
    """Models of the sweep besides the copy machine model; empty means the base model (see ``base``)."""
    base: StrictBool = True
    """With ``models`` empty: also sweep on the base model itself (where a real model shows what else the LoRA changes)."""
    copy_check_base: StrictBool = True
    """The copy check also draws the base model alone at its seeds: what the SSIM to A is without the copy LoRA."""
    copy_machine: StrictBool = True
    """Also sweep on the copy machine model (merged file, or base + copy LoRA when merge = "in_memory"): where A -> B shows cleanest."""
    sampling_steps: Annotated[StrictInt, Field(gt=0, le=1000)] = 20
    """Sampler steps."""
    guidance_scale: Annotated[StrictFloat, Field(ge=0)] = 7.5
    """Classifier-free guidance (gen_img --scale). At 1 or below gen_img skips the unconditional pass: half the time, and the same images for the empty prompt."""
    batch_size: Batch = 1
    """Images per generator batch (same weight, different seeds); more is faster where memory allows."""
    sampler: Sampler = "ddim"
    """gen_img.py's sampler. Ancestral ones (euler_a) add fresh noise at every step, so the seed's starting noise counts less."""
    resolution: Resolution | None = None
    """Image size; empty means the training resolution."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: list[float]) -> list[float]:
        if 0 not in v:
            raise ValueError(f"{v} lacks 0: the metrics compare every weight with weight 0 (add 0, e.g. [-1, 0, 1])")
        bad = [w for w in v if round(w, 6) != w]
        if bad:
            raise ValueError(f"{bad[0]!r} has more than 6 decimals: gen_img.py reads weights without exponents, so write e.g. 0.00001 as 0.0 or 0.0001")
        if len(set(v)) != len(v):
            raise ValueError(f"{v} lists a weight twice")
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


class ModelFiles(Base):
    """The model files a family needs besides its base model (`[model_files]`); which ones each family needs:
    README, Families. Relative paths start at the preset's folder."""

    clip_l: ResolvedPath | None = None
    """CLIP-L text encoder (FLUX.1, SD3/SD3.5): --clip_l."""
    clip_g: ResolvedPath | None = None
    """CLIP-G text encoder (SD3/SD3.5): --clip_g."""
    t5xxl: ResolvedPath | None = None
    """T5-XXL text encoder (FLUX.1, Chroma, SD3/SD3.5): --t5xxl."""
    ae: ResolvedPath | None = None
    """Autoencoder (FLUX.1, Chroma, Lumina 2): --ae."""
    vae: ResolvedPath | None = None
    """VAE (SD3/SD3.5 when the checkpoint has none; Anima: the Qwen-Image VAE; HunyuanImage): --vae."""
    qwen3: ResolvedPath | None = None
    """Qwen3 text encoder, a file or a folder (Anima): --qwen3."""
    gemma2: ResolvedPath | None = None
    """Gemma 2 text encoder (Lumina 2): --gemma2."""
    text_encoder: ResolvedPath | None = None
    """Qwen2.5-VL text encoder (HunyuanImage 2.1): --text_encoder."""
    byt5: ResolvedPath | None = None
    """byT5 text encoder (HunyuanImage 2.1): --byt5."""

    def given(self) -> dict[str, Path]:
        return {k: v for k, v in self if v is not None}


class Preset(Base):
    """A whole copy-machine run: one copy stage and one merge, one difference LoRA per target."""

    version: Literal[2] = 2  # PRESET_VERSION
    """The preset format's version; older presets are brought up to it as they load (cml/preset/migrations.py)."""
    name: str = "copy-machine"
    """Run name: the run folder is output_dir/name."""
    base_model: ResolvedPath
    """The base model: an SD checkpoint (.safetensors, trusted .ckpt), a diffusers folder, or a DiT family's model file."""
    family: Family = "auto"
    """Model family; auto detects it from the file's keys."""
    model_files: ModelFiles = Field(default_factory=ModelFiles)
    """The family's other model files (text encoders, autoencoder)."""
    v_parameterization: StrictBool | None = None
    """v-prediction model (SD2 768-v); empty means detect from metadata, else no."""
    source: Annotated[PathList, Field(min_length=1)]
    """Image A, or several images (a copy machine of a small set), or a folder: its images, sorted by name."""
    targets: dict[str, Target]
    """Named targets; one copy machine serves them all."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    """Settings shared by all training stages."""
    copy_stage: TrainOverrides = Field(default_factory=TrainOverrides, alias="copy")
    """Overrides for the copy stage (`[copy]`)."""
    diff: TrainOverrides = Field(default_factory=TrainOverrides)
    """Overrides for every diff stage (`[diff]`)."""
    merge: MergeMode = "checkpoint"
    """checkpoint: sd-scripts writes the copy machine model (faithful). in_memory: --base_weights, no merged file."""
    merge_precision: Literal["auto", "float", "fp16", "bf16"] = "auto"
    """merge_lora.py --precision; auto = float, fp16 for SDXL (float does not fit 24 GiB)."""
    output_dir: ResolvedPath = Path("runs")
    """Folder that holds run folders."""
    allow_resize: StrictBool = False
    """Let B images of another size than A be resized to A's size."""
    resize_to: Annotated[StrictInt, Field(gt=0)] | None = None
    """Also write each diff LoRA shrunk to this rank (networks/resize_lora.py)."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train; auto = CUDA when available."""
    tokenizer_cache_dir: ResolvedPath | None = None
    """sd-scripts --tokenizer_cache_dir; empty means cml's user cache (offline after the first run)."""
    speedups: StrictBool = True
    """Train with cml's exact speed-ups (cml/sd_process/patches.py: the text encoder's output computed once, no device
    sync per parameter in 8-bit optimizers, no multiplies by 1.0): the same LoRA as sd-scripts' own trainer, bit for
    bit. false runs the trainer script itself."""
    allow_pickle: StrictBool = False
    """Allow a .ckpt base model: sd-scripts unpickles it, which can run code. Prefer .safetensors."""
    baseline: StrictBool = False
    """Also train the naive LoRA of each target: B trained directly on the plain base with the diff stage's recipe
    (no copy machine), the baseline the check sweeps beside the difference LoRAs."""
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
    def _targets(cls, v: dict[str, TargetBase]) -> dict[str, TargetBase]:
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
    def _each_pair_alone(self) -> Preset:
        for name, t in self.targets.items():
            if isinstance(t, CopyMachineTarget) and t.each_pair and t.symmetric:
                raise ValueError(f"targets.{name}: each_pair and symmetric are not made together (a slider of averaged LoRAs): choose one")
        return self

    @model_validator(mode="after")
    def _derived_names(self) -> Preset:
        """A target's slider is named <target>_slider, its naive LoRA <target>_naive: neither may be another target."""
        names = {n.lower(): n for n in self.targets}
        for name, t in self.targets.items():
            derived = [("slider", f"{name}_slider")] if isinstance(t, CopyMachineTarget) and t.symmetric else []
            derived += [("naive LoRA", f"{name}_naive")] if self.baseline else []
            for what, other in derived:
                if other.lower() in names:
                    raise ValueError(f"targets.{name}'s {what} is named {other}, as target {names[other.lower()]!r} is: rename one of them")
        return self

    @model_validator(mode="after")
    def _stages_resolve(self) -> Preset:
        if self.resize_to is not None:
            for name in self.targets:
                dim = self.diff_settings(name).dim
                if self.resize_to > dim:
                    raise ValueError(f"resize_to ({self.resize_to}) is above targets.{name}'s dim ({dim}): resizing can only lower the rank")
        # Overrides stack (train < copy/diff < target): check each stage's result now, not mid-run.
        stages = [("copy", self.copy_settings)] + [(f"targets.{n}", lambda n=n: self.target_settings(n)) for n in self.targets]
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
        return self.targets[target].method

    def target_settings(self, target: str) -> TrainSettings:
        """The settings of a target's own training stage: the diff stage's, with a direct target's own steps."""
        t = self.targets[target]
        s = self.diff_settings(target)
        return TrainSettings.model_validate({**s.model_dump(), "steps": t.steps}) if isinstance(t, DirectTarget) else s

    def direct(self, target: str) -> DirectTarget:
        t = self.targets[target]
        assert isinstance(t, DirectTarget), f"{target} is not a direct target"
        return t

    def to_toml_dict(self) -> dict:
        """The fully resolved preset, itself a valid preset."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
