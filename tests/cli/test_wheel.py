"""cml installed from its wheel (no checkout, no editable install) works from another folder: shipped presets are
package data, and only the sd-scripts submodule needs a checkout."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("cml-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True).stdout.strip())
    # The wheel's dependencies come from this environment's site-packages, added as a plain path: its .pth files
    # (the editable install of this checkout among them) are not run, so `cml` can only come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=600
    )
    if inst.returncode != 0 and "no such option: --python" in inst.stderr:
        pytest.skip("this pip cannot install into another environment (--python): pip 22.3 or newer")
    assert inst.returncode == 0, inst.stderr[-3000:]
    return venv, site


def cml(venv: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CML_SD_SCRIPTS")} | (env or {})
    return subprocess.run([str(venv / "bin" / "cml"), *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=300)


def test_the_wheel_holds_cml_and_its_presets_and_runs_from_another_folder(wheel_venv, tmp_path):
    venv, site = wheel_venv
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import cml; print(cml.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr  # the installed copy, not the checkout
    assert (site / "cml" / "presets" / "grayscale.toml").is_file()

    assert cml(venv, "--help", cwd=tmp_path).returncode == 0
    listed = cml(venv, "presets", cwd=tmp_path)
    assert listed.returncode == 0 and {"grayscale", "demo"} <= {ln.split()[0] for ln in listed.stdout.splitlines() if ln.strip() and not ln.startswith("use ")}
    shown = cml(venv, "show-config", "grayscale", "--set", 'base_model="model.safetensors"', "--set", 'source="a.png"', cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f'base_model = "{tmp_path / "model.safetensors"}"' in shown.stdout  # a shipped preset's paths are the user's
    assert f'output_dir = "{tmp_path / "runs"}"' in shown.stdout and "steps = 500" in shown.stdout

    # without a checkout there is no submodule: sd-scripts comes from CML_SD_SCRIPTS or `cml setup`'s copy
    doc = cml(venv, "doctor", cwd=tmp_path, env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert doc.returncode == 1 and "sd-scripts" in doc.stdout and "Traceback" not in doc.stderr
    assert "the sd-scripts/ submodule" not in doc.stdout and str(tmp_path / "data" / "cml" / "sd-scripts") in doc.stdout
