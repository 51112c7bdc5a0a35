"""Run folders cml owns: it writes only into a new or empty folder, or one it made, and deletes only inside it.

A folder is cml's when its marker ``.cml-run`` holds a run id (and ``run.json``, where there is one, repeats it),
and every entry in it is one cml makes: no other files, and no symbolic links anywhere in it. Checked before
anything is written, by `cml plan`, `cml run` and `cml check` alike. Every path cml deletes or replaces goes
through ``remove_inside``, which refuses any path that does not resolve inside the run folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cml.errors import InputError
from cml.records import RunMarker, RunSummary, read

MARKER = ".cml-run"
# Files older cml versions left in run folders before MARKER existed.
LEGACY_MARKERS = (".cml.lock", ".cml.pid", "run.json")
# What cml itself puts at the top of a run folder.
RUN_FILES = frozenset({MARKER, ".cml.lock", ".cml.pid", "run.json", "commands.sh", "preset.toml", "README.md", "report.md"})
STAGE_DIR = re.compile(
    r"(copy|merge|check|(copy|merge|diff|baseline|naive|resize|comfy|average|direct|slider|reverse-(copy|merge|diff))-[A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
)
FIX = "set another name or output_dir (cml writes only into a new or empty folder, or a run folder it made)"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _symlinks(root: Path, limit: int = 20000) -> list[Path]:
    """Symbolic links anywhere under ``root`` (never followed)."""
    found = []
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(root, followlinks=False)):
        if i > limit:
            break
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                found.append(p)
    return found


def _foreign(run_dir: Path) -> list[str]:
    """Top-level entries cml does not make."""
    return sorted(e.name for e in run_dir.iterdir() if not (e.name in RUN_FILES or (STAGE_DIR.fullmatch(e.name) and e.is_dir())))


def own_preset(preset_file: Path, run_dir: Path) -> bool:
    """The run folder's own preset.toml (`cml run RUN/preset.toml`), not a user's preset beside their files."""
    try:
        return preset_file.resolve() == (run_dir / "preset.toml").resolve() and owner_marker(run_dir) is not None
    except (OSError, RuntimeError):  # a looping link: check_run_dir names it
        return False


def is_run_folder(folder: Path) -> bool:
    """A folder cml made for a run: it holds a marker cml wrote (or, its marker deleted, cml's run.json)."""
    try:
        return owner_marker(folder) is not None or (not (folder / MARKER).exists() and read(RunSummary, folder / "run.json") is not None)
    except OSError:
        return False


def owner_marker(run_dir: Path) -> RunMarker | None:
    """The folder's marker, when it is a file that holds a run id."""
    m = run_dir / MARKER
    return read(RunMarker, m) if m.is_file() else None


def _check_path(run_dir: Path) -> Path:
    """The run folder's path in full, refusing what no folder can be (too long a name, a broken link)."""
    for part in run_dir.parts:
        if len(os.fsencode(part)) > 255:
            raise InputError(f"a folder name in the run folder's path is {len(os.fsencode(part))} bytes long (at most 255)", f"{part[:40]}...", FIX)
    if run_dir.is_symlink():
        try:
            target = run_dir.resolve(strict=True)
        except (OSError, RuntimeError):
            raise InputError("the run folder's path is a broken or looping symbolic link", str(run_dir), FIX) from None
        raise InputError(f"the run folder's path is a symbolic link (to {target}): cml never follows links out of its run folders", str(run_dir), FIX)
    try:
        return run_dir.resolve()
    except (OSError, RuntimeError) as e:
        raise InputError(f"the run folder's path cannot be resolved ({e})", str(run_dir), FIX) from None


def check_run_dir(run_dir: Path, *, preset_file: Path | None, inputs: list[Path], sd_scripts: Path | None) -> None:
    """Refuse a run folder cml does not own, or one whose use would put cml's files among the user's."""
    run_dir = _check_path(run_dir)
    where = str(run_dir)
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{parent} is a file, not a folder", f"output_dir ({where})", "set output_dir to a folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("the run folder's path is a file, not a folder", where, FIX)
    for up in run_dir.parents:
        if (up / MARKER).exists():
            raise InputError(f"the run folder is inside another cml run folder ({up})", where, "set output_dir outside it (e.g. runs/)")
    if sd_scripts is not None and _inside(run_dir, sd_scripts.resolve()):
        raise InputError("the run folder is inside sd-scripts' folder", where, "set output_dir outside sd-scripts (e.g. runs/)")
    if preset_file is not None and _inside(preset_file.resolve().parent, run_dir):
        raise InputError(f"the run folder is, or contains, the preset's folder ({preset_file.resolve().parent})", where, FIX)
    for p in inputs:
        if _inside(p.resolve().parent, run_dir):
            raise InputError(f"the run folder is, or contains, the folder of an input ({p})", where, FIX)
    if run_dir.is_dir():
        check_owned(run_dir)
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError("output folder is not writable", str(probe), "set output_dir to a folder you can write to")
    if Path("/proc") in [probe, *probe.parents] or Path("/sys") in [probe, *probe.parents]:
        raise InputError("the run folder would be in a kernel file system (/proc, /sys)", where, "set output_dir to a folder on a disk")


def check_owned(run_dir: Path) -> None:
    """An existing folder is usable when it is empty, or cml's own (see the module's docstring)."""
    entries = list(run_dir.iterdir())
    if not entries:
        return
    where = str(run_dir)
    for name in LEGACY_MARKERS + (MARKER,):
        p = run_dir / name
        if (p.exists() or p.is_symlink()) and not (p.is_file() and not p.is_symlink()):
            raise InputError(f"{name} in the run folder is not a file (cml writes it as one)", where, FIX)
    marker = owner_marker(run_dir)
    old_marker = marker is None and _old_json(run_dir / MARKER, {"cml", "note"})
    legacy = marker is None and (old_marker or (not (run_dir / MARKER).exists() and any((run_dir / m).is_file() for m in LEGACY_MARKERS)))
    if marker is None and not legacy:
        what = "holds a .cml-run marker cml did not write" if (run_dir / MARKER).exists() else "holds files cml did not make"
        first = sorted(e.name for e in entries)[:3]
        raise InputError(f"the run folder {what} ({', '.join(first)}, ...)", where, FIX)
    foreign = _foreign(run_dir)
    if foreign:
        raise InputError(f"the run folder holds files cml did not make ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})", where, FIX)
    links = _symlinks(run_dir)
    if links:
        raise InputError(
            f"the run folder holds a symbolic link ({links[0].relative_to(run_dir)} -> {os.readlink(links[0])}): cml never follows links out of its run folders",
            where,
            "remove the link (cml writes real folders here), or set another name / output_dir",
        )
    run_json = run_dir / "run.json"
    if run_json.is_file():
        summary = read(RunSummary, run_json)
        if marker is not None and summary is not None and summary.run_id != marker.run_id:
            raise InputError("run.json names another run than the folder's .cml-run marker", where, FIX)
        if legacy and summary is None and not _old_json(run_json, {"run_dir", "stages_run", "stages_skipped", "outputs"}):
            raise InputError("the run folder holds a run.json that cml did not write", where, FIX)


def _old_json(path: Path, keys: set[str]) -> bool:
    """A file as cml 0.1 wrote it before records had a schema version: a JSON object with these keys."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" not in data and keys <= set(data)


def mark(run_dir: Path) -> RunMarker:
    """Claim a run folder (after check_run_dir, under the run lock); returns its marker. A folder of a run whose marker
    was deleted gets it back with the run's own id (from run.json, else a stage record): a new id would disown the
    run's files."""
    existing = owner_marker(run_dir)
    if existing is not None:
        return existing
    marker = RunMarker(run_id=earlier_run_id(run_dir)) if earlier_run_id(run_dir) else RunMarker()
    marker.write(run_dir / MARKER)
    return marker


def earlier_run_id(run_dir: Path) -> str | None:
    """The id of the run whose files the folder holds, from its run.json or its stages' records."""
    from cml.records import StageRecord

    summary = read(RunSummary, run_dir / "run.json")
    if summary is not None:
        return summary.run_id
    for rec_path in sorted(run_dir.glob("*/record.json")):
        rec = read(StageRecord, rec_path)
        if rec is not None:
            return rec.run_id
    return None


def ensure_inside(path: Path, run_dir: Path) -> None:
    """Refuse to write or delete ``path`` unless it resolves inside the run folder (no link leads out)."""
    real_run = run_dir.resolve()
    real = path.parent.resolve() / path.name
    if not _inside(real, real_run) or real == real_run:
        raise InputError(f"{path} resolves to {real}, outside the run folder: cml writes and deletes only inside it", str(run_dir), FIX)


def remove_inside(path: Path, run_dir: Path) -> None:
    """Delete a file, link or folder of the run folder; a link is removed itself, never followed."""
    ensure_inside(path, run_dir)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_space(what: str, where: Path, keep: str = "") -> Iterator[None]:
    """A full disk while writing ``what`` becomes one line that names the place, the space left and the fix."""
    try:
        yield
    except OSError as e:
        if not disk_full(e):
            raise
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise InputError(
            f"the disk is full: {what} could not be written ({free}){keep}",
            str(getattr(e, "filename", None) or where),
            "free space (or set output_dir on another disk), then re-run the same command: finished stages are kept",
        ) from None
