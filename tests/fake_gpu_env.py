"""The fake GPU (tests/fake_gpu: a fake torch in the probe's child process and a fake nvidia-smi) as the device tests
use it: the real probe code runs, only what it talks to is fake."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

FAKE = ROOT / "tests" / "fake_gpu"
RTX2080 = {"name": "NVIDIA GeForce RTX 2080", "capability": [7, 5], "total_memory": 8 * 2**30}
A100 = {"name": "NVIDIA A100-SXM4-40GB", "capability": [8, 0], "total_memory": 40 * 2**30}
OLD_DRIVER = {"error": "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040)."}


FAKE_CACHES: list[Path] = []  # where fake_env makes its caches: the running test's own folder (fake_caches_in_tmp)


@pytest.fixture(autouse=True)
def fake_caches_in_tmp(tmp_path):
    """fake_env's caches go in the test's own pytest folder (pruned by pytest), never in /tmp for good."""
    FAKE_CACHES.append(tmp_path)
    yield
    FAKE_CACHES.remove(tmp_path)


def fake_env(cuda: dict, nvidia_smi: bool = True) -> dict:
    """The fakes, and a cache of their own: the device probe's cached answer is keyed on the real torch's version."""
    cache = tempfile.mkdtemp(prefix="fake-gpu-cache-", dir=FAKE_CACHES[-1])
    env = {"FAKE_CUDA": json.dumps(cuda), "PYTHONPATH": str(FAKE / "python"), "CML_CACHE_DIR": cache}
    path = os.environ.get("PATH", "")
    env["PATH"] = f"{FAKE / 'bin'}{os.pathsep}{path}" if nvidia_smi else path
    return env
