"""The preset: Pydantic models, loading, ``--set`` overrides and error formatting.

Defaults are the article's recipe (dim 16, alpha 16, 500 steps, U-Net only,
AdamW8bit, cosine, no warm-up, lr 1e-3, 512 px, batch 1, empty captions).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
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

from cml.errors import ConfigErrors, InputError

Family = Literal["auto", "sd1", "sd2", "sdxl"]
MergeMode = Literal["checkpoint", "in_memory"]
Transform = Literal["grayscale", "sepia", "invert", "blur"]
Precision = Literal["auto", "fp16", "bf16", "fp32"]
Scalar = str | int | float | bool

# The optimizer_type names sd-scripts accepts at the pinned commit (library/train_util.py, get_optimizer): its own,
# then any torch.optim class by name, or a full "module.Class" path.
OPTIMIZERS = (
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
    "Adadelta",
    "Adagrad",
    "Adam",
    "Adamax",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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


def _unwrap(ann: Any) -> Any:
    """A field's type through Optional[...] and Annotated[...] (the overrides wrap both)."""
    if get_origin(ann) in (Union, UnionType):
        ann = next((a for a in get_args(ann) if a is not type(None)), ann)
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def _numeric(ann: Any) -> tuple[bool, bool]:
    """(a number, a list of numbers) for a field annotation."""
    a = _unwrap(ann)
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
    seed: int = Field(42, ge=0)
    """Training seed."""
    precision: Precision = "auto"
    """Mixed precision: auto = bf16 on GPUs with compute capability 8.0+ (Ampere and newer), fp16 on older GPUs, fp32 on a CPU."""
    gradient_checkpointing: bool | None = None
    """Trade compute for GPU memory; empty means on for SDXL (sd-scripts' SDXL docs recommend it), off otherwise."""
    extra: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    """Further train_network.py options, written into the training TOML as they are."""

    @field_validator("optimizer")
    @classmethod
    def _optimizer_known(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an optimizer, e.g. 'AdamW8bit'")
        if "." not in v and v.lower() not in {o.lower() for o in OPTIMIZERS}:
            close = difflib.get_close_matches(v, OPTIMIZERS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; sd-scripts knows {', '.join(OPTIMIZERS)}, or a module.Class path"
            raise ValueError(f"{v!r} is not an optimizer sd-scripts knows{hint}")
        return v

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


class Target(Base):
    """One diff LoRA: B images paired with the source images, or a built-in transform of them."""

    images: PathList = Field(default_factory=list)
    """B images, one per source image, in the same order."""
    transform: Transform | None = None
    """Make B from A with a built-in transform instead of images."""
    train: TrainOverrides = Field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    """Training settings for this target's diff stage only."""

    @model_validator(mode="after")
    def _images_or_transform(self) -> Target:
        if bool(self.images) == bool(self.transform):
            raise ValueError("give either 'images' (B files) or 'transform' (one of grayscale, sepia, invert, blur), not both or neither")
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
    """Models of the sweep besides the copy machine model; empty means the base model."""
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
    def _no_options(cls, v: list[str]) -> list[str]:
        for p in v:
            if " --" in p or "\n" in p:
                raise ValueError(f"prompt {p!r} contains ' --' or a line break, which gen_img.py reads as options")
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
    """Image A, or several images (a copy machine of a small set)."""
    targets: dict[str, Target]
    """Named targets; one copy machine serves them all."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    """Settings shared by all training stages."""
    copy_stage: TrainOverrides = Field(default_factory=TrainOverrides, alias="copy")  # type: ignore[valid-type]
    """Overrides for the copy stage."""
    diff: TrainOverrides = Field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    """Overrides for every diff stage."""
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
        if not SAFE_NAME.match(v):
            raise ValueError(f"{v!r} is not a safe folder name: use 1 to 64 letters, digits, '_', '-' or '.' (not first)")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: dict[str, Target]) -> dict[str, Target]:
        if not v:
            raise ValueError('add at least one target, e.g. [targets.grayscale] transform = "grayscale"')
        seen: dict[str, str] = {}
        for name in v:
            if not SAFE_NAME.match(name):
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
        for name, t in self.targets.items():
            if t.images and len(t.images) != len(self.source):
                raise ValueError(
                    f"targets.{name}.images has {len(t.images)} image(s) but source has {len(self.source)}: "
                    "give one B image per source image, in the same order"
                )
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

    def to_toml_dict(self) -> dict:
        """The fully resolved preset, itself a valid preset."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return data


# ---------------------------------------------------------------- loading


def toml_value(value: Any) -> str:
    """A value as TOML text, written by tomli-w (any path, emoji included, becomes a valid TOML string)."""
    import tomli_w

    return tomli_w.dumps({"v": value})[len("v = ") :].rstrip("\n")


# A bare word (no quotes, brackets or spaces) that is not TOML is taken as a string: --set name=foo.
BARE_WORD = re.compile(r"^[^\s\"'\[\]{}=#]+$")


def parse_set(items: list[str]) -> list[tuple[list[str], Any]]:
    """``KEY=VALUE`` pairs; VALUE is TOML (a bare word is a string); anything else that is not TOML is an error."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set train.steps=100")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as e:
            if not BARE_WORD.match(raw):
                raise InputError(
                    f"--set {key}: {raw!r} is not a TOML value ({str(e).split(' (at')[0]})",
                    fix="strings need quotes, lists brackets, tables braces: --set 'source=\"a b.png\"' --set 'check.weights=[-1, 0, 1]'",
                ) from None
            value = raw
        out.append(([k.strip() for k in key.split(".")], value))
    return out


def _absolute(model: Any, keys: list[str], value: Any, cwd: Path) -> Any:
    """A --set value with its relative paths made absolute against ``cwd``: the user typed them there."""

    def fix(v: Any) -> Any:
        return str(cwd / Path(v).expanduser()) if isinstance(v, str) and not Path(v).expanduser().is_absolute() else v

    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return value
    if not keys:
        return {k: _absolute(model, [k], v, cwd) for k, v in value.items()} if isinstance(value, dict) else value
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    if keys[0] not in fields:
        return value
    ann = _unwrap(fields[keys[0]].annotation)
    if ann is Path and len(keys) == 1:
        return fix(value)
    if get_origin(ann) is list and get_args(ann) == (Path,) and len(keys) == 1:
        return [fix(v) for v in value] if isinstance(value, list) else fix(value)
    if get_origin(ann) is dict:
        inner = get_args(ann)[1]
        if len(keys) == 1:
            return {k: _absolute(inner, [], v, cwd) for k, v in value.items()} if isinstance(value, dict) else value
        return _absolute(inner, keys[2:], value, cwd)
    return _absolute(ann, keys[1:], value, cwd)


def apply_set(data: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    for path, value in overrides:
        node = data
        for k in path[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise InputError(f"--set {'.'.join(path)}: {k!r} is not a table in the preset")
            node = nxt
        node[path[-1]] = value
    return data


def _known_keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        keys.append(f.alias or name)
    return keys


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (for "did you mean")."""
    model: Any = Preset
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        if part in fields:
            ann = fields[part].annotation
            args = getattr(ann, "__args__", ())
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
            elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
                model = args[-1]  # dict[str, Target] / Optional[X]
            else:
                return None
        # a dict key (target name) keeps the model chosen by the dict's field
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_errors(err: ValidationError, where: str) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = ""
            if model is not None:
                close = difflib.get_close_matches(str(loc[-1]), _known_keys(model), n=1)
                if close:
                    hint = f"; did you mean {'.'.join(str(p) for p in loc[:-1] + (close[0],))!r}?"
            msg = f"unknown key{hint}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{where}: {key}: {msg}")
    return lines


def load_preset(path: Path | str, sets: list[str] | None = None) -> tuple[Preset, str]:
    """Load, override and validate a preset. Returns the preset and the sha256 of its effective text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "preset not found" if not path.exists() else "preset is not a file", str(path), "give the path of a .toml preset, e.g. presets/grayscale.toml"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a UTF-8 BOM (Windows editors) is fine
    except UnicodeDecodeError:
        raise InputError("preset is not UTF-8 text", str(path), "save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", str(path), "fix the syntax (strings need quotes; see presets/grayscale.toml)") from None
    cwd = Path.cwd()
    if sets:  # paths typed on the command line are relative to where they were typed
        data = apply_set(data, [(keys, _absolute(Preset, keys, value, cwd)) for keys, value in parse_set(sets)])
    if isinstance(data, dict) and "output_dir" not in data:
        data["output_dir"] = str(cwd / "runs")  # the default: runs/ where cml is run, written out in show-config
    try:
        preset = Preset.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as e:
        raise ConfigErrors(format_errors(e, str(path))) from None
    import tomli_w

    digest = hashlib.sha256(tomli_w.dumps(preset.to_toml_dict()).encode()).hexdigest()
    return preset, digest
