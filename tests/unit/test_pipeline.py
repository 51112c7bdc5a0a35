"""Orchestration with a fake sd-scripts (tests/fake_sd_scripts): resume, faults, locks, provenance.

The same behaviour on the real sd-scripts is covered in tests/sdscripts/test_e2e.py."""

import pytest


def test_disk_space_is_checked_before_the_merge(write_preset, monkeypatch):
    import shutil

    from cml import prerun
    from cml.errors import InputError
    from tests.conftest import plan_for

    plan = plan_for(write_preset())
    merge = plan.stage("merge")
    merge.dir.mkdir(parents=True)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(InputError, match="not enough disk space for the copy machine model") as e:
        prerun.disk_check(plan, merge)
    assert "GiB needed" in e.value.line() and "in_memory" in e.value.line()


def test_the_fp16_hint_names_precision(write_preset):
    from cml.pipeline import diverged_cause, diverged_fix
    from tests.conftest import plan_for

    plan = plan_for(write_preset(train={"steps": 3, "resolution": 64, "precision": "fp16"}))
    st = plan.stage("copy")
    assert "fp16 overflow" in diverged_cause(plan, st, 5) and 'precision = "fp32"' in diverged_fix(plan, st, 5)
