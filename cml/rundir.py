"""Run folders cml owns: it writes only into a new or empty folder, or one that carries its marker.

Checked before anything is written, by `cml plan`, `cml run` and `cml check` alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cml import __version__
from cml.errors import InputError

MARKER = ".cml-run"
# Files only cml writes: a folder holding one of them was made by cml (older versions wrote no MARKER).
LEGACY_MARKERS = (".cml.lock", ".cml.pid", "run.json")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_cml_run_dir(run_dir: Path) -> bool:
    return any((run_dir / m).exists() for m in (MARKER, *LEGACY_MARKERS))


def check_run_dir(run_dir: Path, *, preset_file: Path | None, inputs: list[Path], sd_scripts: Path | None) -> None:
    """Refuse a run folder cml does not own, or one whose use would put cml's files among the user's."""
    run_dir = run_dir.resolve()
    where = str(run_dir)
    fix = "set another name or output_dir (cml writes only into a new or empty folder, or a run folder it made)"
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{parent} is a file, not a folder", f"output_dir ({where})", "set output_dir to a folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("the run folder's path is a file, not a folder", where, fix)
    if sd_scripts is not None and _inside(run_dir, sd_scripts.resolve()):
        raise InputError("the run folder is inside sd-scripts' folder", where, "set output_dir outside sd-scripts (e.g. runs/)")
    if preset_file is not None and _inside(preset_file.resolve().parent, run_dir):
        raise InputError(f"the run folder is, or contains, the preset's folder ({preset_file.resolve().parent})", where, fix)
    for p in inputs:
        if _inside(p.resolve().parent, run_dir):
            raise InputError(f"the run folder is, or contains, the folder of an input ({p})", where, fix)
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_cml_run_dir(run_dir):
        first = sorted(x.name for x in run_dir.iterdir())[:3]
        raise InputError(f"the run folder holds files cml did not make ({', '.join(first)}, ...)", where, fix)
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError("output folder is not writable", str(probe), "set output_dir to a folder you can write to")


def mark(run_dir: Path) -> None:
    """Claim a run folder (after check_run_dir, under the run lock)."""
    m = run_dir / MARKER
    if not m.exists():
        m.write_text(json.dumps({"cml": __version__, "note": "a cml run folder: cml writes here"}) + "\n")
