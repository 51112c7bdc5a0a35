"""Against the pinned sd-scripts and the installed bitsandbytes, every patch and hook of cml applies: a change
upstream fails here (and `cml doctor` says which)."""

import json
import subprocess
import sys

from cml.sdscripts import python_env


def test_every_patch_applies_to_the_pinned_sd_scripts(sd_scripts):
    r = subprocess.run(
        [sys.executable, "-m", "cml.sd_process.patches"], cwd=sd_scripts.path, env=python_env(sd_scripts), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    status = json.loads(r.stdout.strip().splitlines()[-1])
    assert [s for s in status if not s["applies"]] == []
    assert {s["name"] for s in status} >= {"lora-forward", "lora-base-weights", "sd-load-no-init", "known-sha256", "8bit-no-sync"}
