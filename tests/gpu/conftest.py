"""GPU proof: the article's recipe on a CUDA GPU (`make test-gpu`). Skips, with the reason, where no CUDA GPU is usable.

The runs are the ones `cml.dev.bench_gpu` makes: SD1.5 at 512 px with 500 steps per stage (checkpoint merge, plus
baseline), the same with merge = "in_memory", and SDXL at 1024 px. By default the session runs them itself.
`make gpu-proof` runs `make bench-gpu` first and points CML_GPU_RESULTS at its results, so the GPU is spent
once: the tests then assert on those runs (same machine: the device name is checked) and their run folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gpu():
    from cml.device import nvidia_gpus, probe, unusable_gpu_message

    pr = probe(check_bnb=False)
    if pr.gpu is None:
        gpus = nvidia_gpus()
        if gpus:
            pytest.fail(unusable_gpu_message(gpus, pr))  # a GPU torch cannot use is a failure, not a skip
        pytest.skip(f"no CUDA GPU here ({pr.error or 'torch ' + str(pr.torch) + ' sees none'}); run `make test-gpu` on a CUDA machine")
    return pr.gpu


@pytest.fixture(scope="session")
def gpu_results(gpu, sd_scripts, tmp_path_factory):
    reuse = os.environ.get("CML_GPU_RESULTS")
    if reuse:
        r = json.loads(Path(reuse).read_text())
        assert r["device"].get("name") == gpu.name, f"{reuse} was measured on {r['device'].get('name')}, not this {gpu.name}"
        return {**r, "base": str(Path(reuse).resolve().parent)}
    from cml.dev.bench_gpu import main

    out = tmp_path_factory.mktemp("bench-gpu")
    assert main(["--out", str(out), "--work", str(out / "work")]) == 0
    return {**json.loads((out / "results-gpu.json").read_text()), "base": str(out)}
