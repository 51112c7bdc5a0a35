"""The direct method and two-way sliders run against the fake sd-scripts: files, provenance, resume."""

from __future__ import annotations

import json

from cml.safetensors_file import read_metadata
from tests.conftest import run_cml


def test_direct_and_slider_runs_write_plain_loras_with_their_method_and_resume(write_preset, fake_sd, tmp_path):
    calls = tmp_path / "calls.txt"
    p = write_preset(
        targets={
            "d": {"transform": "grayscale", "method": "direct", "steps": 5, "multiplier": 0.5, "timesteps": [100, 900]},
            "s": {"transform": "invert", "symmetric": True},
        },
    )
    r = run_cml("run", str(p), "--sd-scripts", fake_sd, env={"FAKE_CALLS": str(calls)})
    assert r.returncode == 0, r.stderr
    ran = [ln.split()[1] for ln in calls.read_text().splitlines()]
    assert ran == ["copy", "merge", "direct-d", "diff-s", "reverse-copy-s", "reverse-merge-s", "reverse-diff-s", "slider-s"]
    run = tmp_path / "runs" / "t"
    direct = read_metadata(run / "direct-d" / "d.safetensors")
    assert direct["cml_method"] == "direct" and direct["cml_direct_multiplier"] == "0.5" and direct["cml_direct_timesteps"] == "100,900"
    assert direct["cml_trained_against"] == "base model"
    log = (run / "direct-d" / "log.txt").read_text()
    assert "--cml_direct_multiplier 0.5 --cml_direct_timesteps 100,900" in log.splitlines()[0]
    assert sorted(p.name for p in (run / "direct-d" / "images_a").iterdir()) == ["000.png"]  # A beside B, by name
    assert not (run / "direct-d" / "gui.json").exists() and "the GUI cannot run" in (run / "README.md").read_text()
    slider = read_metadata(run / "slider-s" / "s_slider.safetensors")
    assert slider["cml_method"] == "copy_machine" and "(diff LoRA A->B - diff LoRA B->A) / 2" in slider["cml_slider"]
    assert json.loads((run / "slider-s" / "record.json").read_text())["lora_modules"] == 2  # rank 32 checked: 2 x dim
    calls.write_text("")
    again = run_cml("run", str(p), "--sd-scripts", fake_sd, env={"FAKE_CALLS": str(calls)})
    assert again.returncode == 0 and calls.read_text() == ""
