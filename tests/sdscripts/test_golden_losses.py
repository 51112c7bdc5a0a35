"""A few training steps against recorded losses (torchtune's recipe tests): the copy stage and the direct method's
step on the demo model, under MKL's reproducible mode. A change in sd-scripts' loss, noise or timestep code, or in
cml's step, moves these far beyond the tolerance; float rounding across CPUs does not.

The losses were recorded by this test's own run (GOLDEN below: regenerate with CML_RECORD_GOLDEN=1, then read
the printed values in)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cml
from tests.conftest import sd_preset as preset

pytestmark = pytest.mark.full

REPRODUCIBLE_MKL = {"MKL_CBWR": "COMPATIBLE"}
# recorded on machine E (docs/measurements.md: 2-core AMD EPYC, AVX2), 2026-12-03
GOLDEN: dict[str, list[float]] = {
    "copy": [1.4493639469146729, 0.05668024718761444, 0.1743638515472412, 0.2120170295238495],
    "direct-gray": [1.2334283590316772, 1.2876129150390625, 0.7272804975509644, 0.8782082796096802],
}
RTOL = 1e-3


def test_the_copy_stage_and_the_direct_step_give_the_recorded_losses(demo_assets, tmp_path):
    p = preset(
        tmp_path,
        demo_assets,
        name="golden",
        copy={"steps": 4},
        targets={"gray": {"transform": "grayscale", "method": "direct", "steps": 4}, "g": {"transform": "grayscale"}},
        diff={"steps": 1},
    )
    r = run_cml("run", str(p), "--quiet", env=REPRODUCIBLE_MKL, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "golden"
    got = {s: json.loads((run / s / "record.json").read_text())["losses"] for s in ("copy", "direct-gray")}
    if os.environ.get("CML_RECORD_GOLDEN"):
        print(json.dumps(got))
        pytest.skip("recorded: paste the printed losses into GOLDEN")
    assert set(got) == set(GOLDEN)
    for stage, losses in GOLDEN.items():
        assert len(got[stage]) == len(losses) and all(abs(a - b) <= RTOL * abs(b) for a, b in zip(got[stage], losses)), (stage, got[stage], losses)
