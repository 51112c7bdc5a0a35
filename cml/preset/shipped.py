"""The shipped presets: the repository's top-level presets/ folder, installed with the wheel as cml/presets/.

A preset argument is a path when such a file exists, else the name of a shipped preset: ``cml run grayscale``.
"""

from __future__ import annotations

from pathlib import Path

from cml.errors import InputError
from cml.paths import checkout_root


def presets_dir() -> Path:
    """presets/ of the checkout cml runs from, else the installed package's cml/presets/ (pyproject.toml maps one to
    the other)."""
    root = checkout_root()
    return root / "presets" if root is not None else Path(__file__).resolve().parent.parent / "presets"


def shipped_presets() -> dict[str, Path]:
    """Name -> file of every shipped preset."""
    return {p.stem: p for p in sorted(presets_dir().glob("*.toml"))}


def describe(path: Path) -> str:
    """A shipped preset's first comment line: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_preset(arg: str | Path) -> Path:
    """The preset file an argument names: an existing path, else a shipped preset's name."""
    p = Path(arg).expanduser()
    if p.is_file():
        return p
    shipped = shipped_presets()
    if str(arg) in shipped:
        return shipped[str(arg)]
    if p.exists() or p.suffix == ".toml" or len(p.parts) > 1:
        return p  # a path: read_preset_file says what is wrong with it
    raise InputError(
        f"no preset file {str(arg)!r} here, and no shipped preset of that name",
        None,
        f"give a .toml path, or one of: {', '.join(shipped)} (`cml presets` lists them)",
    )


def is_shipped(path: Path) -> bool:
    return path.resolve() in {p.resolve() for p in shipped_presets().values()}
