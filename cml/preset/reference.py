"""The preset reference, generated from the models' field docstrings: `cml presets --reference` prints it, and
docs/presets.md is its output (tests/unit/test_reference.py keeps the two equal)."""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cml.preset.models import PRESET_VERSION, CheckSettings, CopyMachineTarget, DirectTarget, ModelFiles, Preset, TrainSettings, unwrap

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("top level", Preset, "The run: its base model, images, targets and how the copy machine model is made."),
    ("[train]", TrainSettings, "Every training stage; `[copy]`, `[diff]` and a target's `train` take the same keys, each optional."),
    ("[targets.NAME] (copy machine)", CopyMachineTarget, 'The article\'s method (`method = "copy_machine"`, the default).'),
    ("[targets.NAME] (direct)", DirectTarget, '`method = "direct"`: the difference trained in one stage.'),
    ("[model_files]", ModelFiles, "The other model files of families that need them (README, Families)."),
    ("[check]", CheckSettings, "`cml check` and the check after `cml run`."),
]
SECTION_FIELDS = {"train", "copy", "diff", "targets", "model_files", "check"}


def _type(ann: Any) -> str:
    a = unwrap(ann)
    origin = get_origin(a)
    if origin is not None and str(origin).endswith("Literal"):
        return " \\| ".join(json.dumps(x) for x in get_args(a))
    if get_origin(a) is list:
        return "list"
    name = getattr(a, "__name__", str(a))
    return {"StrictInt": "int", "StrictFloat": "float", "StrictBool": "bool", "PosixPath": "path", "WindowsPath": "path", "Path": "path"}.get(name, name)


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        d = field.default
    elif field.default_factory is not None:
        d = field.default_factory()
    else:
        return "required"
    if d is None:
        return "empty"
    if isinstance(d, BaseModel):
        return "-"
    if isinstance(d, tuple):
        d = list(d)
    return f"`{json.dumps(d, default=str)}`"


def rows(model: type[BaseModel]) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        key = f.alias or name
        if model is Preset and key in SECTION_FIELDS:
            continue
        doc = " ".join((f.description or "").split()).replace("|", "\\|")
        out.append(f"| `{key}` | {_type(f.annotation)} | {_default(f)} | {doc} |")
    return out


def reference() -> str:
    lines = [
        "# The preset reference",
        "",
        f"Generated from cml's preset models (`cml presets --reference`); presets are of version {PRESET_VERSION}. Older "
        "presets load as they are: cml brings them up to this version (cml/preset/migrations.py) and says what it changed.",
        "Relative paths in a preset file start at its folder; unknown keys are errors.",
        "",
    ]
    for title, model, what in SECTIONS:
        lines += [f"## {title}", "", what, "", "| key | type | default | what |", "|---|---|---|---|", *rows(model), ""]
    return "\n".join(lines)
