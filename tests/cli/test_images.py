"""Bad images through the CLI: one line, exit 2, nothing written."""

import pytest

from tests.conftest import colourful


@pytest.mark.parametrize("size, resolution", [((96, 80), 64), ((8192, 100), 512)])
def test_images_sd_scripts_cannot_bucket_are_refused_at_plan_time(write_preset, tmp_path, size, resolution):
    from tests.conftest import run_cml

    a = tmp_path / "wide.png"
    colourful(size).save(a)
    p = write_preset(source=str(a), train={"steps": 3, "resolution": resolution})
    r = run_cml("plan", str(p))
    assert r.returncode == 2, r.stderr
    assert f"sd-scripts cannot bucket source[0] wide.png ({size[0]}x{size[1]}) at {resolution} px" in r.stderr
    assert "crop the image closer to square, or raise train.resolution" in r.stderr
    assert not (tmp_path / "runs").exists()
