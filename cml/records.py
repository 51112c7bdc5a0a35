"""The files cml writes to remember a run, as typed models with a schema version.

- ``.cml-run``: the run folder's marker: cml made this folder; its run id is repeated by ``run.json``;
- ``<stage>/record.json``: what a finished output was made from, and its size and sha256;
- ``run.json``: the summary of the last ``cml run``;
- ``check/metrics.json``: what ``cml check`` measured.

Reading never raises: a file that is missing, not JSON, of another schema or shape reads as None, and the caller
says what that means (a stage without a usable record is checked again or made again).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cml import __version__
from cml.files import atomic_write

SCHEMA_VERSION = 1


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION

    def write(self, path: Path) -> None:
        atomic_write(path, self.model_dump_json(indent=2) + "\n")


R = TypeVar("R", bound=Record)


def read(cls: type[R], path: Path) -> R | None:
    """The record at ``path``, or None when there is none cml can trust (missing, a folder, malformed, other schema)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    try:
        return cls.model_validate(data)
    except ValidationError:
        return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunMarker(Record):
    """``.cml-run``: written when cml first claims a folder."""

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    cml: str = __version__
    created: str = Field(default_factory=now)
    note: str = "a cml run folder: cml writes here, and deletes only what it made here"


class StageRecord(Record):
    """``<stage>/record.json``: a finished output, what it was made from, and how."""

    run_id: str
    stage: str
    fingerprint: str
    output: str
    output_size: int
    output_sha256: str
    output_content: str | None = None  # sha256 of its tensors, metadata left out (cml/safetensors_file.py); None: cml 0.1's
    finished: str = Field(default_factory=now)
    inputs: dict[str, str] = Field(default_factory=dict)  # upstream stage -> sha256 of the tensors (cml 0.1: of the file) this was made from
    seconds: float | None = None
    argv: list[str] = Field(default_factory=list)
    losses: list[float] = Field(default_factory=list)
    early_loss: float | None = None  # written by cml 0.1's early-loss method check (retired); read, never written
    lora_modules: int | None = None
    merge_check: dict[str, int] | None = None
    markers_kept: list[str] = Field(default_factory=list)
    extra_files: list[str] = Field(default_factory=list)  # files the trainer wrote besides the output (train.extra)
    adopted: str | None = None  # why a finished output found without its record was trusted


class SdScriptsInfo(BaseModel):
    path: str
    commit: str | None
    pinned: bool


class RunSummary(Record):
    """``run.json``: the last ``cml run`` of this folder."""

    run_id: str
    run_dir: str
    seconds: float
    stages_run: list[str]
    stages_skipped: list[str]
    outputs: dict[str, str]
    kept_outputs: dict[str, str]
    method_check: dict[str, dict[str, float | None]] = Field(default_factory=dict)  # cml 0.1's (retired): read, never written
    sd_scripts: SdScriptsInfo


class CheckMetrics(Record):
    """``check/metrics.json``: the copy check and each sweep's measures, per target and model."""

    settings: dict[str, Any]
    copy_check: dict[str, Any] | None
    targets: dict[str, dict[str, dict[str, dict[str, float]]]]  # target -> sweep model -> weight -> measure
    # several As: target -> sweep model -> weight -> the mean SSIM to each A (``ssim_to_a`` is to the nearest)
    leakage_to_each_a: dict[str, dict[str, dict[str, list[float]]]] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)  # sweep label -> the model file (and LoRAs) it names
    grids: list[str]
    loss_plot: str | None = None
