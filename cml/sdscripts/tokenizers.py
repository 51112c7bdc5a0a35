"""The tokenizers sd-scripts loads per family: found in tokenizer_cache_dir or the hub's cache, or downloadable."""

from __future__ import annotations

import os
from pathlib import Path

from cml.errors import InputError
from cml.families import FAMILIES

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def missing_tokenizers(family: str, cache_dir: Path) -> list[str]:
    """Tokenizers sd-scripts would have to download: in neither tokenizer_cache_dir nor the hub's own cache."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    out = []
    for model_id in FAMILIES[family].tokenizers:
        if (cache_dir / model_id.replace("/", "_")).is_dir():
            continue
        if (hub / f"models--{model_id.replace('/', '--')}" / "snapshots").is_dir():
            continue
        out.append(model_id)
    return out


def check_tokenizers(family: str, cache_dir: Path) -> None:
    """One line, before anything runs, when sd-scripts could neither find nor download its tokenizer."""
    missing = missing_tokenizers(family, cache_dir)
    if missing and not hub_reachable():
        raise InputError(
            f"sd-scripts needs the tokenizer {', '.join(missing)}: it is not in {cache_dir} and {HUB_HOST} cannot be reached (offline)",
            "tokenizer_cache_dir",
            "run once with network (it is then kept in tokenizer_cache_dir), or set tokenizer_cache_dir to a folder that holds it",
        )
