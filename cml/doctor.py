"""`cml doctor`: can a run work here? Each missing piece comes with the command that fixes it."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.errors import InputError
from cml.sdscripts import check_imports, locate


@dataclass
class Finding:
    what: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def diagnose(sd_option: str | None = None) -> list[Finding]:
    out = [Finding("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})", "use Python 3.11 or newer")]
    try:
        import torch

        out.append(Finding("torch", True, torch.__version__))
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            out.append(Finding("device", True, f"CUDA: {p.name}, {p.total_memory / 2**30:.0f} GiB"))
        else:
            out.append(Finding("device", True, "CPU only (no CUDA GPU): demo-scale runs work; real 512 px runs take hours", required=False))
        try:
            import bitsandbytes  # noqa: F401

            bnb = torch.cuda.is_available()
            out.append(Finding("bitsandbytes", bnb, "usable (AdamW8bit)" if bnb else "installed, but needs CUDA: AdamW8bit falls back to AdamW", required=False))
        except Exception as e:
            out.append(Finding("bitsandbytes", False, f"not usable ({type(e).__name__}): AdamW8bit falls back to AdamW", "pip install bitsandbytes", required=False))
    except ImportError:
        out.append(Finding("torch", False, "not installed", "make setup"))
    try:
        sd = locate(sd_option)
        pinned = sd.commit == PINNED_SD_SCRIPTS_COMMIT
        out.append(Finding("sd-scripts", True, sd.describe()))
        if not pinned:
            out.append(Finding("sd-scripts commit", False, f"{sd.commit or 'unknown'} is not the pinned {PINNED_SD_SCRIPTS_COMMIT[:10]}", "cml setup (or check out the pinned commit)", required=False))
        err = check_imports(sd)
        out.append(Finding("sd-scripts imports", err is None, "OK" if err is None else err, "make setup (installs sd-scripts' requirements.txt)"))
    except InputError as e:
        out.append(Finding("sd-scripts", False, e.what, e.fix or "make setup"))
    return out


def report(findings: list[Finding]) -> int:
    for f in findings:
        mark = "ok " if f.ok else ("!! " if f.required else "-- ")
        print(f"{mark}{f.what:20} {f.detail}")
    missing = [f for f in findings if not f.ok and f.required]
    if missing:
        print("\ncml cannot run yet. To fix:")
        for f in missing:
            print(f"  {f.what}: {f.fix}")
        return 1
    print("\nready: cml can run here")
    return 0
