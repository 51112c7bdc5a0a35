"""The option names sd-scripts' trainers accept, read from their own argument parsers.

The parser is built in a child process (cml/sd_process/parser_options.py: importing sd-scripts means importing torch),
once per sd-scripts commit and script, and cached; `train.extra` is checked against it at plan time.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys

from cml.cache import TRAINER_OPTIONS
from cml.errors import InputError


def trainer_options(sd, script: str) -> set[str] | None:
    """The option names of ``script`` (e.g. "train_network"); None when they cannot be read (then nothing is checked)."""
    from cml.sdscripts import python_env

    key = TRAINER_OPTIONS.key(sd.commit, script)
    cached = TRAINER_OPTIONS.read_json(key) if sd.commit else None
    if isinstance(cached, list):
        return set(cached)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "cml.sd_process.parser_options", script], cwd=sd.path, env=python_env(sd), capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("[")), None)
    if p.returncode != 0 or line is None:
        return None
    names = json.loads(line)
    if sd.commit:
        TRAINER_OPTIONS.write_json(key, names)
    return set(names)


def check_extra(plan, sd, script: str) -> None:
    """train.extra: every key an option of the trainer ("did you mean" otherwise), all errors at once."""
    extras = [st.settings.extra for st in plan.stages if st.settings is not None and st.settings.extra]
    known = trainer_options(sd, script) if extras else None  # one parser read for all stages
    if known is None:
        return
    lines = []
    for extra in extras:
        for key in sorted(extra):
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                lines.append(f"{key!r} is not an option of {script}.py{hint}")
    if lines:
        raise InputError("; ".join(sorted(set(lines))), "train.extra", "use option names as sd-scripts' --help lists them (without the leading --)")
