"""The direct method and two-way sliders, orchestrated (the fake sd-scripts): stages, argv, files, provenance, resume."""

from __future__ import annotations

import json

from cml.safetensors_file import read_metadata
from tests.conftest import plan_for, run_cml


def names(plan):
    return [s.name for s in plan.stages]


def test_a_direct_target_has_one_stage_and_no_copy_or_merge(write_preset):
    plan = plan_for(write_preset(targets={"grayscale": {"transform": "grayscale", "method": "direct"}}))
    assert names(plan) == ["direct-grayscale"]
    st = plan.stage("direct-grayscale")
    assert st.model == plan.preset.base_model and st.train.steps == 80  # the direct method's default steps
    mixed = plan_for(write_preset(targets={"g": {"transform": "grayscale"}, "d": {"transform": "grayscale", "method": "direct"}}))
    assert names(mixed) == ["copy", "merge", "diff-g", "direct-d"]  # the copy machine serves the copy machine target only


def test_a_symmetric_target_trains_the_way_back_and_combines_both(write_preset):
    plan = plan_for(write_preset(targets={"g": {"transform": "grayscale", "symmetric": True}}))
    assert names(plan) == ["copy", "merge", "diff-g", "reverse-copy-g", "reverse-merge-g", "reverse-diff-g", "slider-g"]
    back = plan.stage("reverse-diff-g")
    assert back.model == plan.stage("reverse-merge-g").output and back.depends == ["reverse-merge-g"]
    from cml.render.scripts import stage_argv

    argv = stage_argv(plan, plan.stage("slider-g"))
    assert argv[1] == "networks/merge_lora.py" and "--sd_model" not in argv
    assert argv[argv.index("--models") + 1 : argv.index("--models") + 3] == [str(plan.stage("diff-g").output), str(back.output)]
    assert argv[argv.index("--ratios") + 1 : argv.index("--ratios") + 3] == ["1.0", "-1.0"] and "--concat" in argv
    mem = plan_for(write_preset(merge="in_memory", targets={"g": {"transform": "grayscale", "symmetric": True}}))
    assert names(mem) == ["copy", "diff-g", "reverse-copy-g", "reverse-diff-g", "slider-g"]
    assert mem.stage("reverse-diff-g").base_weights == [mem.stage("reverse-copy-g").output]


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
