"""Finding sd-scripts: where cml looks, in which order, and which commit a checkout is at."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.errors import CmlError, InputError
from cml.paths import checkout_root, data_dir, submodule

# What cml runs; a checkout without these cannot work.
ENTRY_SCRIPTS = ("train_network.py", "sdxl_train_network.py", "networks/merge_lora.py", "networks/sdxl_merge_lora.py", "networks/lora.py")


class SdScriptsNotFound(InputError):
    """No sd-scripts checkout anywhere cml looks."""


@dataclass
class SdScripts:
    path: Path
    commit: str | None  # None when not a git checkout
    found_by: str
    present: bool = True  # False: not found; path is where the submodule would be (cml plan writes files anyway)

    @property
    def pinned(self) -> bool:
        return self.commit == PINNED_SD_SCRIPTS_COMMIT

    def describe(self) -> str:
        c = self.commit[:10] if self.commit else "unknown commit"
        pin = "pinned" if self.pinned else f"NOT the pinned {PINNED_SD_SCRIPTS_COMMIT[:10]}"
        return f"{self.path} ({c}, {pin}; found by {self.found_by})"


def git(args: list[str], cwd: Path | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_HTTP_LOW_SPEED_LIMIT="1000", GIT_HTTP_LOW_SPEED_TIME="20", LC_ALL="C")
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise CmlError(f"git {' '.join(args)} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}")
    return p


# A copy without .git (cml's GPU bundle) names its commit in this file.
COMMIT_FILE = ".cml-sd-scripts-commit"


def read_commit(path: Path) -> str | None:
    if not (path / ".git").exists():
        try:
            return (path / COMMIT_FILE).read_text().strip() or None
        except OSError:
            return None
    try:
        p = git(["rev-parse", "HEAD"], cwd=path, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def is_checkout(path: Path) -> bool:
    return all((path / s).is_file() for s in ENTRY_SCRIPTS)


def candidates(option: str | None = None) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if option:
        out.append((Path(option).expanduser(), "--sd-scripts"))
    env = os.environ.get("CML_SD_SCRIPTS")
    if env:
        out.append((Path(env).expanduser(), "CML_SD_SCRIPTS"))
    sub = submodule()
    if sub is not None:
        out.append((sub, "the sd-scripts/ submodule"))
    out.append((data_dir(), "cml setup's data directory"))
    return out


def locate(option: str | None = None) -> SdScripts:
    """The first usable sd-scripts, in the documented order. An explicit choice that is unusable is an error."""
    for path, how in candidates(option):
        if is_checkout(path):
            return SdScripts(path.resolve(), read_commit(path), how)
        if how in ("--sd-scripts", "CML_SD_SCRIPTS"):
            raise InputError(f"{path} is not an sd-scripts checkout (no train_network.py)", how, "point it at a kohya-ss/sd-scripts folder, or run `cml setup`")
    looked = ["--sd-scripts", "CML_SD_SCRIPTS"] + (["the sd-scripts/ submodule"] if submodule() is not None else []) + [str(data_dir())]
    raise SdScriptsNotFound(
        f"sd-scripts not found (looked at {', '.join(looked[:-1])} and {looked[-1]})",
        None,
        f"run `{setup_hint()}` (offline: `cml setup --source PATH_OR_URL --deps` with an sd-scripts clone or snapshot)",
    )


def setup_hint() -> str:
    """The set-up command for this install: the Makefile's in a clone, cml's own otherwise (a wheel, Windows)."""
    return "make setup" if checkout_root() is not None else "cml setup --deps"


def commit_warning(sd: SdScripts) -> str | None:
    if sd.pinned:
        return None
    return (
        f"warning: sd-scripts at {sd.path} is at {sd.commit or 'an unknown commit'}, not the pinned "
        f"{PINNED_SD_SCRIPTS_COMMIT[:10]}; cml is tested only against the pinned commit"
    )
