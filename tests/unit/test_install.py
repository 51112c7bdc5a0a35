"""How cml installs packages into its own Python (cml/install.py, for make setup and cml setup --deps): uv where this Python has it, pip where
uv fails or is absent. The commands are recorded, not run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cml import install as installer


@pytest.fixture
def calls(monkeypatch):
    """subprocess.run, recorded: each command exits with the code the test gives its installer."""
    seen: list[list[str]] = []
    codes = {"uv": 0, "pip": 0}

    def run(argv, *a, **k):
        seen.append(list(argv))
        return subprocess.CompletedProcess(argv, codes["uv" if argv[2] == "uv" else "pip"])

    monkeypatch.setattr(installer.subprocess, "run", run)
    return seen, codes


def uv_installed(monkeypatch, present: bool) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if present else None) if name == "uv" else real(name, *a))


def test_uv_installs_where_this_python_has_it(monkeypatch, calls):
    seen, _ = calls
    uv_installed(monkeypatch, True)
    assert installer.install(["-r", "req.txt"], log=lambda m: None).returncode == 0
    assert seen == [[sys.executable, "-m", "uv", "pip", "install", "-q", "--python", sys.executable, "-r", "req.txt"]]


def test_pip_installs_where_uv_fails_and_says_so(monkeypatch, calls):
    seen, codes = calls
    codes["uv"] = 2
    said: list[str] = []
    uv_installed(monkeypatch, True)
    assert installer.install(["-r", "req.txt"], log=said.append).returncode == 0
    assert [c[2] for c in seen] == ["uv", "pip"] and seen[1] == [sys.executable, "-m", "pip", "install", "-q", "--no-compile", "-r", "req.txt"]
    assert said == ["uv could not install that; trying pip"]


def test_pip_alone_where_uv_is_absent(monkeypatch, calls):
    seen, codes = calls
    codes["pip"] = 1
    uv_installed(monkeypatch, False)
    assert installer.install(["x==1"], log=lambda m: None).returncode == 1  # pip's own failure is the answer
    assert seen == [[sys.executable, "-m", "pip", "install", "-q", "--no-compile", "x==1"]]


def test_every_package_of_the_tree_is_in_the_wheel():
    """pyproject.toml lists cml's packages by hand (presets/ is mapped in): a new folder must be listed too, or the
    installed cml fails with ModuleNotFoundError where the checkout works."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {".".join(p.parent.relative_to(root).parts) for p in (root / "cml").rglob("__init__.py")}
    assert tree - listed == set()
