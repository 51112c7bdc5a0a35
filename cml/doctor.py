"""`cml doctor`: can a run work here? Each missing piece comes with the command that fixes it."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.device import TORCH_FIX, nvidia_gpus, probe, unusable_gpu_message
from cml.errors import InputError
from cml.paths import default_tokenizer_cache
from cml.sdscripts import check_imports, hub_reachable, locate, missing_tokenizers, setup_hint


@dataclass
class Finding:
    what: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def diagnose(sd_option: str | None = None) -> list[Finding]:
    out = [Finding("python", sys.version_info >= (3, 11), f"{platform.python_version()} ({sys.executable})", "use Python 3.11 or newer")]
    out += device_findings()
    try:
        sd = locate(sd_option)
        out.append(Finding("sd-scripts", True, sd.describe()))
        if not sd.pinned:
            out.append(
                Finding(
                    "sd-scripts commit",
                    False,
                    f"{sd.commit or 'unknown'} is not the pinned {PINNED_SD_SCRIPTS_COMMIT[:10]}",
                    "cml setup (or check out the pinned commit)",
                    required=False,
                )
            )
        err = check_imports(sd)
        out.append(Finding("sd-scripts imports", err is None, "OK" if err is None else err, f"{setup_hint()} (installs sd-scripts' requirements.txt)"))
        cache = default_tokenizer_cache()
        missing = missing_tokenizers("sd1", cache)
        if not missing:
            out.append(Finding("tokenizer", True, f"cached in {cache}"))
        elif hub_reachable():
            out.append(Finding("tokenizer", True, f"not cached yet: the first run downloads {missing[0]} into {cache}"))
        else:
            out.append(
                Finding(
                    "tokenizer",
                    False,
                    f"{missing[0]} is not in {cache} and huggingface.co cannot be reached (offline)",
                    "run once with network, or set tokenizer_cache_dir in the preset to a folder that holds it",
                )
            )
    except InputError as e:
        out.append(Finding("sd-scripts", False, e.what, e.fix or setup_hint()))
    return out


def device_findings() -> list[Finding]:
    """torch, the GPU and AdamW8bit, from the child-process probe (cml's own process never imports torch)."""
    pr = probe()
    if pr.torch is None:
        return [Finding("torch", False, pr.error or "not installed", "install torch (see the README: the build for your CUDA), then " + setup_hint())]
    out = [Finding("torch", True, f"{pr.torch} ({f'CUDA {pr.torch_cuda} build' if pr.torch_cuda else 'CPU-only build'})")]
    if pr.gpu is not None:
        g = pr.gpu
        prec = "bf16" if g.bf16 else "fp16"
        out.append(Finding("device", True, f"CUDA: {g.describe()}; precision auto = {prec}"))
        ok = g.bnb_error is None
        out.append(
            Finding(
                "bitsandbytes",
                ok,
                "one AdamW8bit step ran on the GPU" if ok else f"AdamW8bit failed ({g.bnb_error}): it falls back to AdamW",
                "pip install -U bitsandbytes (a build for your CUDA)",
                required=False,
            )
        )
        return out
    gpus = nvidia_gpus()
    if gpus:
        out.append(Finding("device", False, unusable_gpu_message(gpus, pr), TORCH_FIX))
        return out
    out.append(
        Finding(
            "device", True, "CPU only (no NVIDIA GPU found): demo-scale runs work; real 512 px runs take hours; AdamW8bit falls back to AdamW", required=False
        )
    )
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
