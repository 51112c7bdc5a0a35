"""The environment sd-scripts' processes run in, and whether its modules import there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cml.cache import INIT_RNG, torch_compile_dir
from cml.sdscripts.lookup import SdScripts


def python_env(sd: SdScripts, known_sha256: dict[str, list] | None = None) -> dict[str, str]:
    """Environment for sd-scripts subprocesses: unbuffered output, offline hub unless the user said otherwise."""
    env = dict(os.environ)
    # sd-scripts' requirements.txt installs it with `-e .`; cml puts it on the path instead, so one venv
    # serves any sd-scripts folder (networks/*.py import `library`).
    env["PYTHONPATH"] = os.pathsep.join([str(sd.path), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    compiled = torch_compile_dir()  # train.torch_compile: inductor's and triton's caches live in cml's cache
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compiled / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(compiled / "triton"))
    env["CML_INIT_RNG_DIR"] = str(INIT_RNG.dir)  # cml/sd_process/model_init.py learns torch's generator state there
    if known_sha256:  # cml/sd_process/patches.py: sd-scripts need not hash these files again
        env["CML_KNOWN_SHA256"] = json.dumps(known_sha256)
    return env


def check_imports(sd: SdScripts, timeout: float = 300) -> str | None:
    """None when sd-scripts' own modules import in this Python; else the last error line."""
    code = "import library.train_util, library.config_util, networks.lora, library.sdxl_train_util"
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=sd.path, capture_output=True, text=True, timeout=timeout, env=python_env(sd))
    except subprocess.TimeoutExpired:
        return "importing sd-scripts timed out"
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {p.returncode}"
