"""Run folders cml owns (cml/rundir.py), through the CLI against the fake sd-scripts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cml.runner import RunLock
from tests.conftest import ROOT, run_cml


def user_folder(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    for name, text in (("README.md", "my notes\n"), ("commands.sh", "echo mine\n")):
        (proj / name).write_text(text)
    return proj


def refused(r, what: str) -> None:
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:")]
    assert r.returncode == 2 and len(errors) == 1 and what in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", ["plan", "run"])
def test_the_presets_own_folder_is_never_a_run_folder(write_preset, tmp_path, fake_sd, cmd):
    proj = user_folder(tmp_path)
    p = write_preset(filename="proj/preset.toml", output_dir="..", name="proj")
    before = {f.name: f.read_text() for f in proj.iterdir()}
    r = run_cml(cmd, str(p), "--sd-scripts", fake_sd)
    refused(r, "is, or contains, the preset's folder")
    assert {f.name: f.read_text() for f in proj.iterdir()} == before  # nothing written, nothing overwritten


def test_a_folder_with_files_cml_did_not_make_is_refused(write_preset, tmp_path, fake_sd):
    user_folder(tmp_path)
    p = write_preset(output_dir=str(tmp_path), name="proj")
    refused(run_cml("plan", str(p), "--sd-scripts", fake_sd), "holds files cml did not make")
    assert (tmp_path / "proj" / "commands.sh").read_text() == "echo mine\n"


def test_new_empty_and_own_folders_are_fine(write_preset, tmp_path, fake_sd):
    (tmp_path / "runs" / "t").mkdir(parents=True)  # empty
    p = write_preset()
    assert run_cml("plan", str(p), "--sd-scripts", fake_sd).returncode == 0
    assert (tmp_path / "runs" / "t" / ".cml-run").is_file()
    assert run_cml("plan", str(p), "--sd-scripts", fake_sd).returncode == 0  # its own folder again


def test_run_folder_inside_sd_scripts_or_around_an_input_is_refused(write_preset, tmp_path, fake_sd, image_a):
    refused(run_cml("plan", str(write_preset(output_dir=fake_sd)), "--sd-scripts", fake_sd), "inside sd-scripts' folder")
    (tmp_path / "imgs").mkdir()
    a = image_a.rename(tmp_path / "imgs" / "a.png")
    p = write_preset(source=str(a), output_dir=str(tmp_path), name="imgs")
    refused(run_cml("plan", str(p), "--sd-scripts", fake_sd), "the folder of an input")


def test_a_run_folder_or_output_dir_that_is_a_file_is_named_so(write_preset, tmp_path, fake_sd):
    (tmp_path / "runs").write_text("a file")
    refused(run_cml("plan", str(write_preset()), "--sd-scripts", fake_sd), "is a file, not a folder")


@pytest.mark.parametrize("cmd", ["plan", "check"])
def test_plan_and_check_wait_for_no_one_they_refuse_while_a_run_holds_the_folder(write_preset, tmp_path, fake_sd, cmd):
    p = write_preset()
    assert run_cml("plan", str(p), "--sd-scripts", fake_sd).returncode == 0
    run = tmp_path / "runs" / "t"
    train_toml = (run / "copy" / "train.toml").read_text()
    with RunLock(run):
        args = ["plan", str(write_preset(train={"steps": 9, "resolution": 64}))] if cmd == "plan" else ["check", str(run)]
        r = run_cml(*args, "--sd-scripts", fake_sd)
    refused(r, "another cml run is using this run folder")
    assert (run / "copy" / "train.toml").read_text() == train_toml


def trainer_pid(calls: Path, timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = calls.read_text().splitlines() if calls.exists() else []
        if lines:
            return int(lines[-1].split()[2])
        time.sleep(0.1)
    raise AssertionError("the trainer never started")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def start_run(preset: Path, fake_sd: str, calls: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, FAKE_MODE=mode, FAKE_CALLS=str(calls))
    return subprocess.Popen(
        [sys.executable, "-m", "cml", "run", str(preset), "--sd-scripts", fake_sd, "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")
def test_a_killed_cml_takes_its_trainer_with_it(write_preset, tmp_path, fake_sd):
    calls = tmp_path / "calls.txt"
    cml = start_run(write_preset(), fake_sd, calls, "hang")
    pid = trainer_pid(calls)
    cml.send_signal(signal.SIGKILL)
    cml.wait()
    end = time.monotonic() + 10
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not alive(pid), "the trainer went on after cml was killed"


def test_no_new_run_while_an_old_trainer_still_writes(write_preset, tmp_path, fake_sd):
    calls = tmp_path / "calls.txt"
    p = write_preset()
    cml = start_run(p, fake_sd, calls, "stubborn")  # its trainer ignores SIGTERM: it outlives cml
    pid = trainer_pid(calls)
    log = tmp_path / "runs" / "t" / "copy" / "log.txt"
    end = time.monotonic() + 60
    while "loading model" not in (log.read_text() if log.exists() else "") and time.monotonic() < end:  # its handlers are in place
        time.sleep(0.05)
    cml.send_signal(signal.SIGKILL)
    cml.wait()
    try:
        assert alive(pid)
        r = run_cml("run", str(p), "--sd-scripts", fake_sd)
        refused(r, "another cml run is using this run folder")
        # the message names who holds the folder: the trainer that still runs, not the dead cml
        assert f"the trainer an earlier cml run started, pid {pid}, which still runs although that cml (pid {cml.pid}) has ended" in r.stderr
    finally:
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert run_cml("run", str(p), "--sd-scripts", fake_sd).returncode == 0
