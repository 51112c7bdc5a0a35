"""The suite's own guard: a session run two at a time (pytest-xdist, as make test runs tests/unit and tests/cli) that
writes the user's cache fails, naming it, though no test of it can run after all the others."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

WRITES = "from pathlib import Path\n\ndef test_w():\n    p = Path.home() / '.cache' / 'cml' / 'x'\n    p.parent.mkdir(parents=True)\n    p.write_text('x')\n"
READS = "def test_r():\n    assert True\n"


@pytest.mark.parametrize("body", [WRITES, READS], ids=["writes", "reads"])
def test_a_parallel_session_that_writes_the_users_cache_fails(tmp_path, body):
    t = tmp_path / "test_guarded.py"
    t.write_text(body)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "pytest", "-n", "2", "-p", "tests.conftest", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path), str(t)]
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if body is WRITES:
        assert r.returncode == 1 and f"the suite changed {tmp_path / 'home' / '.cache' / 'cml'}" in r.stdout, r.stdout[-2000:]
    else:
        assert r.returncode == 0, r.stdout[-2000:]
