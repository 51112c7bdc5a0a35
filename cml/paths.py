"""Where cml keeps things outside the repository."""

import os
from pathlib import Path


def cache_root() -> Path:
    """Caches (demo model, tokenizers, file hashes): CML_CACHE_DIR, default ~/.cache/cml."""
    return Path(os.environ.get("CML_CACHE_DIR") or Path.home() / ".cache" / "cml")
