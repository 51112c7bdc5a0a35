"""Where cml keeps things outside run folders: its caches, its data, and the checkout it may run from."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Caches (demo model, tokenizers, file hashes, the device probe's answer): CML_CACHE_DIR, default ~/.cache/cml."""
    return Path(os.environ.get("CML_CACHE_DIR") or Path.home() / ".cache" / "cml")


def data_dir() -> Path:
    """Where `cml setup` keeps its sd-scripts checkout when cml does not run from a clone with the submodule."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cml" / "sd-scripts"


def checkout_root() -> Path | None:
    """The git clone cml runs from (editable install), or None (a wheel install).

    The one place that knows the repository's layout; used only where a checkout is really needed:
    the sd-scripts submodule, and the developer tools (bench results, the GPU bundle).
    """
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".gitmodules").is_file() and (root / "pyproject.toml").is_file() else None


def submodule() -> Path | None:
    """The sd-scripts submodule's folder in the checkout; None in a wheel install."""
    root = checkout_root()
    return root / "sd-scripts" if root is not None else None
