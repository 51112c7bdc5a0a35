"""Loading a preset: the TOML file, ``--set`` overrides, typed overrides from cml's own callers, and errors.

Three sources, applied in this order (a later one wins):
1. the preset file (paths in it are relative to its folder), brought up to the current version (migrations.py);
2. ``--set KEY=VALUE`` (VALUE is TOML text, as the user typed it; paths relative to the current folder);
3. typed overrides: Python values from cml itself (``-o``, ``cml grayscale``'s arguments, the demo's assets),
   never turned into TOML text and parsed back.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from cml.errors import ConfigErrors, InputError
from cml.preset.migrations import migrate
from cml.preset.models import CopyMachineTarget, DirectTarget, Preset, unwrap
from cml.preset.shipped import is_shipped

# A bare word (no quotes, brackets or spaces) that is not TOML is taken as a string: --set name=foo.
BARE_WORD = re.compile(r"^[^\s\"'\[\]{}=#]+$")

Keys = tuple[str, ...]


def parse_set(items: list[str]) -> list[tuple[Keys, Any]]:
    """``KEY=VALUE`` pairs; VALUE is TOML (a bare word is a string); anything else that is not TOML is an error."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set train.steps=100")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as e:
            if not BARE_WORD.fullmatch(raw):
                raise InputError(
                    f"--set {key}: {raw!r} is not a TOML value ({str(e).split(' (at')[0]})",
                    fix="strings need quotes, lists brackets, tables braces: --set 'source=\"a b.png\"' --set 'check.weights=[-1, 0, 1]'",
                ) from None
            value = raw
        out.append((tuple(k.strip() for k in key.split(".")), value))
    return out


def _absolute(model: Any, keys: Keys, value: Any, cwd: Path) -> Any:
    """A --set value with its relative paths made absolute against ``cwd``: the user typed them there."""

    def fix(v: Any) -> Any:
        return str(cwd / Path(v).expanduser()) if isinstance(v, str) and not Path(v).expanduser().is_absolute() else v

    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return value
    if not keys:
        return {k: _absolute(model, (k,), v, cwd) for k, v in value.items()} if isinstance(value, dict) else value
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    if keys[0] not in fields:
        return value
    ann = unwrap(fields[keys[0]].annotation)
    if ann is Path and len(keys) == 1:
        return fix(value)
    if get_origin(ann) is list and get_args(ann) == (Path,) and len(keys) == 1:
        return [fix(v) for v in value] if isinstance(value, list) else fix(value)
    if get_origin(ann) is dict:
        inner = get_args(ann)[1]
        if len(keys) == 1:
            return {k: _absolute(inner, (), v, cwd) for k, v in value.items()} if isinstance(value, dict) else value
        return _absolute(inner, keys[2:], value, cwd)
    return _absolute(ann, keys[1:], value, cwd)


def _apply(data: dict, keys: Keys, value: Any, how: str) -> None:
    node = data
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise InputError(f"{how} {'.'.join(keys)}: {k!r} is not a table in the preset")
        node = nxt
    node[keys[-1]] = value


def _plain(value: Any) -> Any:
    """A typed override as the data a preset file would hold (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


TAGS = {"copy_machine": CopyMachineTarget, "direct": DirectTarget}
# Keys of one target kind given to the other: what to say instead of "unknown key".
OTHER_KIND = {
    "symmetric": "symmetric is for the copy machine method; the direct method trains both ways already",
    "steps": 'steps is a direct target\'s key (method = "direct"); a copy machine target takes train.steps',
    "multiplier": 'multiplier is a direct target\'s key (method = "direct")',
    "timesteps": 'timesteps is a direct target\'s key (method = "direct")',
}


def _plain_loc(loc: tuple) -> tuple:
    """An error's location without the union's tag (targets.x.direct.steps -> targets.x.steps)."""
    if len(loc) > 2 and loc[0] == "targets" and loc[2] in TAGS:
        return loc[:2] + loc[3:]
    return loc


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (for "did you mean"); ``loc`` still holds the union's tag."""
    model: Any = Preset
    if len(loc) > 3 and loc[0] == "targets" and loc[2] in TAGS:
        model, loc = TAGS[loc[2]], loc[3:]
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
        plain = _plain_loc(loc)
        key = ".".join(str(p) for p in plain) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = ""
            if model in TAGS.values() and len(plain) == 3 and plain[-1] in OTHER_KIND:
                msg = OTHER_KIND[str(plain[-1])]
            else:
                if model is not None:
                    known = [f.alias or n for n, f in model.model_fields.items()]
                    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
                    if close:
                        hint = f"; did you mean {'.'.join(str(p) for p in plain[:-1] + (close[0],))!r}?"
                msg = f"unknown key{hint}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] in ("int_type", "float_type", "bool_type") and isinstance(e.get("input"), bool):
            msg = "must be a number, not true/false"
        elif e["type"] == "int_type" and isinstance(e.get("input"), float):
            msg = f"must be a whole number (got {e['input']!r})"
        elif e["type"] == "bool_type":
            msg = f"must be true or false (got {e.get('input')!r})"
        lines.append(f"{where}: {key}: {msg}")
    return list(dict.fromkeys(lines))


def read_preset_file(path: Path) -> dict:
    if not path.is_file():
        raise InputError(
            "preset not found" if not path.exists() else "preset is not a file",
            str(path),
            "give the path of a .toml preset, or a shipped preset's name (`cml presets` lists them)",
        )
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a UTF-8 BOM (Windows editors) is fine
    except UnicodeDecodeError:
        raise InputError("preset is not UTF-8 text", str(path), "save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", str(path), "fix the syntax (strings need quotes; `cml show-config grayscale` prints a valid preset)") from None
    except RecursionError:
        raise InputError("not a preset: its tables or arrays nest too deep to read", str(path), "`cml show-config grayscale` prints a valid preset") from None


def load_preset(
    path: Path | str, sets: list[str] | None = None, overrides: Mapping[str, Any] | None = None, notes: list[str] | None = None
) -> tuple[Preset, str]:
    """Load, migrate, override and validate a preset. Returns the preset and the sha256 of its effective settings.

    ``overrides``: dotted keys ("output_dir", "targets.grayscale") to typed values (paths absolute), from cml itself.
    ``notes``: gets a line per change the migration made to an older preset.
    """
    path = Path(path)
    data, changed = migrate(read_preset_file(path), str(path))
    if notes is not None:
        notes += [f"{path}: {n}" for n in changed]
    cwd = Path.cwd()
    for keys, value in parse_set(sets or []):  # paths typed on the command line are relative to where they were typed
        _apply(data, keys, _absolute(Preset, keys, value, cwd), "--set")
    for key, value in (overrides or {}).items():
        _apply(data, tuple(key.split(".")), _plain(value), "override")
    if isinstance(data, dict) and "output_dir" not in data:
        data["output_dir"] = str(cwd / "runs")  # the default: runs/ where cml is run, written out in show-config
    try:
        # A shipped preset's relative paths (placeholders like "a.png") mean files where the user runs cml.
        base_dir = cwd if is_shipped(path) else path.resolve().parent
        preset = Preset.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ConfigErrors(format_errors(e, str(path))) from None
    return preset, preset_digest(preset)


def preset_digest(preset: Preset) -> str:
    """sha256 of what the preset asks for: where its run folder lies (output_dir) is not part of it."""
    import tomli_w

    data = preset.to_toml_dict()
    data.pop("output_dir", None)
    return hashlib.sha256(tomli_w.dumps(data).encode()).hexdigest()
