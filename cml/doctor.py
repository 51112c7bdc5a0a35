"""`cml doctor`: can a run work here? Each missing piece comes with the command that fixes it."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.cache import tokenizers_dir
from cml.device import TORCH_FIX, nvidia_gpus, probe, unusable_gpu_message
from cml.errors import InputError
from cml.sdscripts import check_imports, locate, python_env, setup_hint
from cml.sdscripts.tokenizers import hub_reachable, missing_tokenizers


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
        if err is None:
            out += patch_findings(sd)
        cache = tokenizers_dir()
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


def patch_status(sd) -> list[dict] | str:
    """cml's patches of sd-scripts and bitsandbytes and whether each applies there (cml/sd_process/patches.py, run in
    sd-scripts' Python); a string when that could not be read."""
    import json
    import subprocess

    try:
        p = subprocess.run([sys.executable, "-m", "cml.sd_process.patches"], cwd=sd.path, env=python_env(sd), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "reading the patches timed out"
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("[")), None)
    if p.returncode != 0 or line is None:
        return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return json.loads(line)


def patch_findings(sd) -> list[Finding]:
    status = patch_status(sd)
    if isinstance(status, str):
        return [Finding("patches", False, status, "see the error above", required=False)]
    return [
        Finding(
            f"patch {s['name']}",
            s["applies"],
            f"{s['kind']}: {s['what']}" + ("" if s["applies"] else f" -- off: {s['why']}"),
            "use the pinned sd-scripts commit (cml setup) and bitsandbytes of sd-scripts' requirements",
            required=False,
        )
        for s in status
    ]


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
        print(f"{mark}{f.what:26} {f.detail}")
    missing = [f for f in findings if not f.ok and f.required]
    if missing:
        print("\ncml cannot run yet. To fix:")
        for f in missing:
            print(f"  {f.what}: {f.fix}")
        return 1
    print("\nready: cml can run here")
    return 0
