"""Packages installed into this Python, for `make setup` and `cml setup --deps`: one home for how (the standard
library only: the Makefile runs it before cml's own requirements are installed).

    python -m cml.install [--pip] ARGS...     (ARGS as pip install takes them)

uv where it is installed here (``make setup`` puts it in the venv; about 3x faster than pip), falling back to pip
where uv fails (uv reads no pip.conf), else pip; ``--pip``: pip alone. Neither compiles at install time: Python
compiles what it imports when it first imports it (compiling every file of transformers and diffusers at install
costs half a minute that no run needs).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def install(args: list[str], log=print, pip_only: bool = False) -> subprocess.CompletedProcess:
    """Install ``args`` into this Python (see the module's docstring)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-compile", *args]
    if pip_only or importlib.util.find_spec("uv") is None:
        return subprocess.run(pip)
    p = subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--python", sys.executable, *args])
    if p.returncode == 0:
        return p
    log("uv could not install that; trying pip")
    return subprocess.run(pip)


def main(argv: list[str]) -> int:
    pip_only = argv[:1] == ["--pip"]
    return install(argv[1:] if pip_only else argv, lambda m: print(f"make: {m}"), pip_only).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
