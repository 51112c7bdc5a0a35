"""commands.sh, "the exact commands", runs from start to end as written after `cml plan`, and makes what `cml run` makes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from cml.safetensors_file import read_metadata
from tests.conftest import run_cml
from tests.conftest import sd_preset as preset

pytestmark = pytest.mark.full  # the full tier: `make test-full`

# ss_* keys that differ between two trainings of the same settings: times, ids, the paths of the run folder, and the
# hash of the model trained against (the copy machine model is itself a training output: on a CPU, two trainings with
# the same seed differ in the last bits, and so do their merges).
VARYING = {"ss_training_started_at", "ss_training_finished_at", "ss_session_id", "ss_dataset_dirs", "ss_datasets", "ss_new_sd_model_hash"}


def outputs(run: Path) -> dict[str, Path]:
    return {str(p.relative_to(run)): p for p in run.rglob("*.safetensors") if "work" not in p.parts}


def test_commands_sh_runs_to_the_end_and_matches_cml_run(sd_scripts, demo_assets, tmp_path):
    top = {"copy": {"steps": 4}, "diff": {"steps": 2}}
    (tmp_path / "a").mkdir()
    by_hand = preset(tmp_path / "a", demo_assets, **top)
    r = run_cml("plan", str(by_hand), "--sd-scripts", str(sd_scripts.path))
    assert r.returncode == 0, r.stderr
    run_a = tmp_path / "a" / "runs" / "e2e"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # sd-scripts' Python active
    sh = subprocess.run(["bash", str(run_a / "commands.sh")], capture_output=True, text=True, env=env, timeout=1800)
    assert sh.returncode == 0, f"commands.sh failed:\n{sh.stdout[-2000:]}\n{sh.stderr[-3000:]}"

    (tmp_path / "b").mkdir()
    by_cml = preset(tmp_path / "b", demo_assets, **top)
    r = run_cml("run", str(by_cml), "--quiet", "--sd-scripts", str(sd_scripts.path), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    run_b = tmp_path / "b" / "runs" / "e2e"

    a, b = outputs(run_a), outputs(run_b)
    assert sorted(a) == sorted(b) == ["copy/copy.safetensors", "diff-grayscale/grayscale.safetensors", "merge/copy_machine.safetensors"]
    for name in ("copy/copy.safetensors", "diff-grayscale/grayscale.safetensors"):
        with safe_open(str(a[name]), "numpy") as fa, safe_open(str(b[name]), "numpy") as fb:
            assert set(fa.keys()) == set(fb.keys())
        ma = {k: v for k, v in read_metadata(a[name]).items() if k.startswith("ss_") and k not in VARYING}
        mb = {k: v for k, v in read_metadata(b[name]).items() if k.startswith("ss_") and k not in VARYING}
        # the one ss_ key cml writes itself (as commands.sh says): a name that tells runs apart in A1111
        assert (ma.pop("ss_output_name"), mb.pop("ss_output_name")) == (Path(name).stem, f"e2e-{Path(name).stem}")
        assert ma == mb, {k: (ma.get(k), mb.get(k)) for k in set(ma) | set(mb) if ma.get(k) != mb.get(k)}
        assert json.loads(read_metadata(b[name])["cml_images_sha256"])  # cml adds provenance on top
