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


def test_a_target_trained_pair_by_pair_has_a_copy_machine_per_pair_and_their_mean(write_preset, tmp_path):
    from cml.plan import Role
    from cml.render.scripts import stage_argv
    from tests.conftest import colourful

    a = []
    for i in range(3):
        p = tmp_path / f"a{i}.png"
        colourful((96 + 8 * i, 96)).resize((96, 96)).rotate(30 * i).save(p)
        a.append(str(p))
    plan = plan_for(write_preset(source=a, targets={"g": {"transform": "grayscale", "each_pair": True}}))
    assert names(plan) == ["copy-g-p1", "merge-g-p1", "diff-g-p1", "copy-g-p2", "merge-g-p2", "diff-g-p2", "copy-g-p3", "merge-g-p3", "diff-g-p3", "average-g"]
    for i in (1, 2, 3):
        assert len(plan.stage(f"copy-g-p{i}").images) == 1 and plan.stage(f"diff-g-p{i}").model == plan.stage(f"merge-g-p{i}").output
    avg = plan.stage("average-g")
    argv = stage_argv(plan, avg)
    assert argv[argv.index("--models") + 1 : argv.index("--ratios")] == [str(plan.stage(f"diff-g-p{i}").output) for i in (1, 2, 3)]
    assert argv[argv.index("--ratios") + 1 : argv.index("--concat")] == ["1.0"] * 3
    assert [s.name for s in plan.stages if s.result] == ["average-g"] and avg.role is Role.AVERAGE and avg.swept
