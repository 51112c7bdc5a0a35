"""cml's caches, in one place: where each lives under ``cache_root()`` (``CML_CACHE_DIR``, default ``~/.cache/cml``),
its version, and how its entries are keyed, read and written. Entries are written atomically; a cache that cannot be
read or written only costs time (a damaged entry reads as missing).

| cache | holds | keyed by |
|---|---|---|
| ``sha256.json`` (``SHA256``) | a base model's sha256 and its U-Net tensors holding NaN or Inf | the file's path and identity (size, mtime, inode, ctime) |
| ``device-probe/`` | the device probe's answer | torch and bitsandbytes versions, the driver and GPUs, the probe's Python and paths |
| ``sd-scripts-options/`` | a trainer's option names, read from its own parser | sd-scripts' commit and the script |
| ``init-rng/`` | torch's generator after an SD1/SD2 model load | (in the trainer's process, cml/sd_process/model_init.py) the state before it, the versions, sd-scripts' model code |
| ``vae-roundtrip/`` | image A through the base model's VAE: the copy check's reference | the model's identity, A's pixels, the size |

Folders that are caches of other tools: ``tokenizers/`` (sd-scripts' tokenizer_cache_dir), ``demo/`` (the demo
model and its assets), ``torch-compile/`` (inductor's and triton's caches).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cml.files import atomic_path, atomic_write
from cml.paths import cache_root


@dataclass(frozen=True)
class Cache:
    """A folder of entries, one file each, named by a key made from what the entry depends on."""

    name: str
    version: int
    suffix: str

    @property
    def dir(self) -> Path:
        return cache_root() / self.name

    def key(self, *parts: object) -> str:
        return hashlib.sha256("|".join(map(str, (self.name, self.version, *parts))).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / f"{key}{self.suffix}"

    def read_json(self, key: str) -> Any | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_json(self, key: str, data: Any) -> None:
        try:
            atomic_write(self.path(key), json.dumps(data))
        except OSError:
            pass

    def store(self, key: str, src: Path) -> None:
        """A copy of the file ``src`` as the entry."""
        try:
            with atomic_path(self.path(key)) as tmp:
                shutil.copyfile(src, tmp)
        except OSError:
            pass


@dataclass(frozen=True)
class Table:
    """One JSON file of entries by name, pruned of entries ``keep`` refuses whenever one is written."""

    name: str
    version: int

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}.json"

    def entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != self.version or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]

    def get(self, name: str) -> Any | None:
        return self.entries().get(name)

    def put(self, name: str, entry: Any, keep: Callable[[str], bool]) -> None:
        files = {k: v for k, v in self.entries().items() if keep(k)}
        files[name] = entry
        try:
            atomic_write(self.path, json.dumps({"version": self.version, "files": files}))
        except OSError:
            pass


SHA256 = Table("sha256", 3)
DEVICE_PROBE = Cache("device-probe", 2, ".json")
TRAINER_OPTIONS = Cache("sd-scripts-options", 2, ".json")
INIT_RNG = Cache("init-rng", 1, ".bin")  # written by the trainer's process only: it gets the folder (CML_INIT_RNG_DIR)
VAE_ROUNDTRIP = Cache("vae-roundtrip", 2, ".png")


def tokenizers_dir() -> Path:
    """sd-scripts' --tokenizer_cache_dir when the preset sets none: after the first online run, runs are offline."""
    return cache_root() / "tokenizers"


def torch_compile_dir() -> Path:
    return cache_root() / "torch-compile"
