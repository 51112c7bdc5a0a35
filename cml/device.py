"""Where training runs, found out without torch in cml's own process.

cml's process never imports torch or opens a CUDA context: it sits beside trainers that need every
GiB of memory. A short child process (the Python that runs sd-scripts) probes the device instead:
CUDA, GPU name, memory, compute capability, and whether one real AdamW8bit step works. The NVIDIA
driver is looked for separately (``nvidia-smi``, ``/proc/driver/nvidia``), so that a GPU which the
installed torch cannot use is named as such instead of silently becoming a multi-hour CPU run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cml.errors import InputError

PROBE_TIMEOUT = 180.0
# bf16 runs natively from Ampere (compute capability 8.0) on; below that it is emulated or refused.
BF16_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Gpu:
    name: str
    total_memory: int  # bytes
    capability: tuple[int, int]
    bnb_error: str | None  # None: one real AdamW8bit step worked

    @property
    def bf16(self) -> bool:
        return self.capability >= BF16_MIN_CAPABILITY

    def describe(self) -> str:
        return f"{self.name}, {self.total_memory / 2**30:.0f} GiB, compute capability {self.capability[0]}.{self.capability[1]}"


@dataclass(frozen=True)
class Probe:
    torch: str | None
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU build
    gpu: Gpu | None
    error: str | None  # why CUDA is not usable, as torch said it


def nvidia_gpus() -> list[str]:
    """NVIDIA GPUs the driver reports, without CUDA: ``nvidia-smi -L``, else ``/proc/driver/nvidia/gpus``."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            p = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            names = [ln.split(":", 1)[1].split("(UUID")[0].strip() for ln in p.stdout.splitlines() if ln.startswith("GPU ")]
            if names:
                return names
        except (OSError, subprocess.SubprocessError):
            pass
    root = Path("/proc/driver/nvidia/gpus")
    found = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            info = d / "information"
            name = "NVIDIA GPU"
            try:
                for ln in info.read_text().splitlines():
                    if ln.startswith("Model:"):
                        name = ln.split(":", 1)[1].strip()
            except OSError:
                pass
            found.append(name)
    return found


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of GPU 0 from ``nvidia-smi``: no CUDA context. None when it cannot be read."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        p = subprocess.run(
            [smi, "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits", "-i", "0"], capture_output=True, text=True, timeout=30
        )
        free, total = (int(float(x)) * 2**20 for x in p.stdout.strip().splitlines()[0].split(","))
        return free, total
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def probe(env: dict[str, str] | None = None, check_bnb: bool = True, python: str | None = None) -> Probe:
    """Ask a child Python (sd-scripts' environment) what torch can use (cml/sd_process/device_probe.py). Never imports torch here."""
    argv = [python or sys.executable, "-m", "cml.sd_process.device_probe"] + (["bnb"] if check_bnb else [])
    base = dict(os.environ if env is None else env)  # the child must find cml itself, whatever else its path holds
    env = dict(base, PYTHONPATH=os.pathsep.join(filter(None, [base.get("PYTHONPATH"), str(Path(__file__).resolve().parent.parent)])))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Probe(None, None, None, f"the device probe did not answer within {PROBE_TIMEOUT:.0f} s")
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        last = (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        return Probe(None, None, None, f"the device probe failed ({last})")
    return _from_json(json.loads(line))


def _from_json(d: dict) -> Probe:
    if "error" in d:
        return Probe(None, None, None, d["error"])
    gpu = None
    if d.get("cuda"):
        gpu = Gpu(
            d["name"], int(d["total_memory"]), (int(d["capability"][0]), int(d["capability"][1])), None if "bnb" in d else d.get("bnb_error", "not checked")
        )
    return Probe(d.get("torch"), d.get("torch_cuda"), gpu, d.get("cuda_error"))


TORCH_FIX = (
    "install a torch build that your NVIDIA driver supports, e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu124` "
    "(see README, 'GPU set-up'), or update the driver; set device = \"cpu\" only to train on the CPU on purpose (hours)"
)


def unusable_gpu_message(gpus: list[str], pr: Probe) -> str:
    build = f"torch {pr.torch} (CUDA {pr.torch_cuda})" if pr.torch_cuda else f"torch {pr.torch} (a CPU-only build)" if pr.torch else "torch"
    why = f": {pr.error}" if pr.error else ""
    return f"an NVIDIA GPU is present ({', '.join(gpus)}) but {build} cannot use it{why}"


def resolve_device(requested: str, env: dict[str, str] | None = None) -> tuple[str, Gpu | None, list[str]]:
    """'cuda' or 'cpu' for a preset's ``device``, the GPU when there is one, and notes for the user.

    ``auto`` never falls back to the CPU when an NVIDIA GPU is present but unusable: that is an error.
    """
    if requested == "cpu":
        return "cpu", None, []
    pr = cached_probe(env)
    if pr.gpu is not None:
        notes = []
        if pr.gpu.bnb_error:
            notes.append(f"AdamW8bit could not run one step on {pr.gpu.name} ({pr.gpu.bnb_error})")
        return "cuda", pr.gpu, notes
    gpus = nvidia_gpus()
    if gpus:
        raise InputError(unusable_gpu_message(gpus, pr), f'device = "{requested}"', TORCH_FIX)
    if requested == "cuda":
        why = pr.error or "no NVIDIA GPU found"
        raise InputError(
            f'device = "cuda" but CUDA is not usable here ({why})', "device", 'set device = "auto" or "cpu", or run on a machine with an NVIDIA GPU'
        )
    return "cpu", None, ["no CUDA GPU found: training on the CPU (demo scale is fine; 512 px, 500 steps take hours)"]


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def probe_key(env: dict[str, str] | None = None) -> str:
    """What the probe's answer depends on, read without torch: the torch and bitsandbytes versions installed, the
    NVIDIA driver and GPUs (nvidia-smi), and the Python and paths the child runs with."""
    e = os.environ if env is None else env
    smi = shutil.which("nvidia-smi", path=e.get("PATH"))
    driver = ""
    if smi:
        try:
            p = subprocess.run([smi, "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            driver = p.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            driver = "unreadable"
    parts = [sys.executable, e.get("PYTHONPATH", ""), e.get("CUDA_VISIBLE_DEVICES", ""), _version("torch"), _version("bitsandbytes"), driver]
    from cml.cache import DEVICE_PROBE

    return DEVICE_PROBE.key(*parts)


def cached_probe(env: dict[str, str] | None = None) -> Probe:
    """The probe's answer, from cml's cache when nothing it depends on has changed (probe_key): a probe imports
    torch and bitsandbytes and runs a GPU step, seconds at every start. `cml doctor` always probes afresh."""
    from cml.cache import DEVICE_PROBE

    key = probe_key(env)
    cached = DEVICE_PROBE.read_json(key)
    if isinstance(cached, dict):
        try:
            return _from_json(cached)
        except (ValueError, KeyError, TypeError, IndexError):
            pass
    pr = probe(env)
    if pr.torch is not None:  # a failed probe is not kept: the next run asks again
        DEVICE_PROBE.write_json(key, _to_json(pr))
    return pr


def _to_json(pr: Probe) -> dict:
    d: dict = {"torch": pr.torch, "torch_cuda": pr.torch_cuda, "cuda": pr.gpu is not None}
    if pr.error:
        d["cuda_error"] = pr.error
    if pr.gpu is not None:
        g = pr.gpu
        d.update(name=g.name, total_memory=g.total_memory, capability=list(g.capability))
        d.update({"bnb": "ok"} if g.bnb_error is None else {"bnb_error": g.bnb_error})
    return d
