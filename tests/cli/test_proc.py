"""Process groups and signals (cml/proc.py), with real child processes."""

import subprocess
import sys


def test_every_module_imports_without_posix_only_modules():
    """As on Windows: no fcntl, no os.killpg at import time."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import cml.cli, cml.pipeline, cml.prepare, cml.resume, cml.runner, cml.rundir, cml.device, cml.doctor, cml.report.check\n"
        "print('imported')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr
