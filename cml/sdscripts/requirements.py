"""sd-scripts' pinned requirements, installed into this Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cml.errors import CmlError
from cml.sdscripts.lookup import SdScripts


def install_requirements(sd: SdScripts, log=print) -> None:
    """pip-install sd-scripts' pinned requirements.txt into this Python, once per requirements content.

    Its ``-e .`` line is left out: cml puts sd-scripts on PYTHONPATH instead, so one environment
    serves whichever sd-scripts folder is found.
    """
    import hashlib
    import tempfile

    req = sd.path / "requirements.txt"
    text = req.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("-e")]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    stamp = Path(sys.prefix) / ".cml-sd-scripts-requirements"
    if stamp.exists() and stamp.read_text().strip() == digest:
        log("sd-scripts requirements already installed; nothing to do")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    log(f"installing sd-scripts requirements ({req}) into {sys.prefix} ...")
    from cml.install import install

    p = install(["-r", f.name], log)
    os.unlink(f.name)
    if p.returncode != 0:
        raise CmlError(f"pip could not install sd-scripts' requirements (exit {p.returncode})", fix="see pip's output above")
    stamp.write_text(digest + "\n")
