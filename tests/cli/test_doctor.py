"""`cml doctor`."""

from tests.conftest import run_cml


def test_doctor_without_sd_scripts_exits_non_zero_and_names_the_fix(tmp_path):
    r = run_cml("doctor", env={"CML_SD_SCRIPTS": str(tmp_path)})
    assert r.returncode == 1
    assert "is not an sd-scripts checkout" in r.stdout
    assert "cml cannot run yet. To fix:" in r.stdout and "cml setup" in r.stdout
