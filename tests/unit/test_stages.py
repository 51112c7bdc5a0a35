"""The direct method and two-way sliders, orchestrated (the fake sd-scripts): stages, argv, files, provenance, resume."""

from __future__ import annotations

from tests.conftest import plan_for


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
