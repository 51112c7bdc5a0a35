"""Presets of earlier versions, brought up to this one before they are validated (OneTrainer's ordered migrations):
each step takes the raw data of version N to N + 1 and says what it changed, so saved presets and the preset.toml of
every old run folder keep loading (and `cml check` keeps working on them) after a key is renamed or moved.

A preset without ``version`` is version 1 (cml 0.1, before presets had one). tests/data/presets/ holds a frozen preset
of every old version; tests/unit/test_migrations.py loads each through the chain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from cml.errors import InputError
from cml.preset.models import PRESET_VERSION


def v1_to_v2(data: dict[str, Any]) -> list[str]:
    """Version 1 -> 2: the method is a target's (a union discriminated by ``method``), the direct method's settings
    are a direct target's own keys, and ``baseline`` (v1: a 10-step early-loss "method check") now trains the naive
    LoRA."""
    notes = []
    method = data.pop("method", "copy_machine")
    direct = data.pop("direct", None) or {}
    for target in (data.get("targets") or {}).values():
        if not isinstance(target, dict):
            continue
        m = target.get("method") or method
        if m == "direct":
            target["method"] = "direct"
            if target.get("symmetric") is False:  # v1 wrote symmetric = false on every target; true is refused as in v1
                del target["symmetric"]
            train = target.get("train")
            own = train.pop("steps", None) if isinstance(train, dict) else None
            target["steps"] = own if own is not None else direct.get("steps", 80)
            for key in ("multiplier", "timesteps"):
                if key in direct:
                    target.setdefault(key, direct[key])
        elif "method" in target or method != "copy_machine":
            target["method"] = m
    if method != "copy_machine":
        notes.append(f"method = {method!r} is now each target's own key (targets.<name>.method)")
    if direct:
        notes.append("[direct]'s keys are now each direct target's own (targets.<name>.steps, multiplier, timesteps)")
    data.pop("baseline_steps", None)
    if data.pop("baseline", False):
        notes.append("baseline (the early-loss method check) is retired: baseline = true now trains the naive LoRA, B on the plain base")
    return notes


# version N -> the step that takes it to N + 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], list[str]]] = {1: v1_to_v2}


def migrate(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """``data`` at the current version, and a note per change made on the way."""
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"version = {version!r} is not a preset version", where, f"write version = {PRESET_VERSION}, or leave it out for a version 1 preset")
    if version > PRESET_VERSION:
        raise InputError(f"the preset is of version {version}, made by a newer cml (this one reads up to version {PRESET_VERSION})", where, "upgrade cml")
    data, notes = copy.deepcopy(data), []
    while version < PRESET_VERSION:
        notes += [f"version {version} -> {version + 1}: {n}" for n in MIGRATIONS[version](data)]
        version += 1
    data["version"] = PRESET_VERSION
    return data, notes
