"""`cml run` against the fake sd-scripts (tests/fake_sd_scripts): stages, resume, interrupts, errors and what cml prints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cml.runner import RunLock
from cml.safetensors_file import read_metadata
from tests.conftest import ROOT, run_cml, start_cml_to_interrupt, tokenizer_dir


@pytest.fixture
def fake(tmp_path, fake_sd):
    calls = tmp_path / "calls.txt"

    def run(preset: Path, *args: str, mode: str = "ok"):
        calls.write_text("")
        r = run_cml("run", str(preset), "--sd-scripts", fake_sd, *args, env={"FAKE_MODE": mode, "FAKE_CALLS": str(calls)})
        r.calls = [ln.split()[1] for ln in calls.read_text().splitlines()]
        return r

    return run


def two_targets(write_preset, **kw):
    return write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert"}}, **kw)


def test_full_run_then_nothing_to_redo(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    r = fake(p)
    assert r.returncode == 0, r.stderr
    assert r.calls == ["copy", "merge", "diff-g", "diff-i"]  # one copy machine serves both targets
    run = tmp_path / "runs" / "t"
    for name in ("g", "i"):
        lora = run / f"diff-{name}" / f"{name}.safetensors"
        meta = read_metadata(lora)
        assert meta["cml_target"] == name and meta["cml_stage"] == f"diff-{name}" and meta["cml_merge_mode"] == "checkpoint"
        assert json.loads(meta["cml_images_sha256"])["B"] == [f"transform:{'grayscale' if name == 'g' else 'invert'}"]
        assert meta["ss_network_module"] == "networks.lora"  # sd-scripts' own keys are kept
        assert not (run / f"diff-{name}" / "work").exists()
    assert "[4/4] diff-i: done" in r.stderr
    again = fake(p)
    assert again.returncode == 0 and again.calls == []
    assert again.stderr.count("up to date, skipped") == 4
    assert json.loads((run / "run.json").read_text())["stages_skipped"] == ["copy", "merge", "diff-g", "diff-i"]


def test_changing_one_target_retrains_only_it_and_needs_force_to_replace(fake, write_preset):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    changed = write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert", "train": {"steps": 2}}})
    refused = fake(changed)
    assert refused.returncode == 2 and refused.calls == []
    assert "this would replace finished work: diff-i/i.safetensors (made from other settings or inputs)" in refused.stderr
    assert "--force" in refused.stderr
    forced = fake(changed, "--force")
    assert forced.returncode == 0 and forced.calls == ["diff-i"]


def test_from_reruns_that_stage_and_everything_after(fake, write_preset):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    refused = fake(p, "--from", "merge")  # finished LoRAs are replaced only with --force, as the README says
    assert refused.returncode == 2 and refused.calls == []
    assert "diff-g/g.safetensors (--from merge); diff-i/i.safetensors (--from merge)" in refused.stderr
    assert fake(p, "--from", "merge", "--force").calls == ["merge", "diff-g", "diff-i"]
    bad = fake(p, "--from", "nope")
    assert bad.returncode == 2 and "use one of: copy, merge, diff-g, diff-i" in bad.stderr


def test_trainer_failure_shows_stage_exit_code_and_log_tail_then_resumes(fake, write_preset, tmp_path):
    p = write_preset()
    assert fake(p, "--from", "copy").returncode == 0
    r = fake(write_preset(train={"steps": 4, "resolution": 64}), "--force", mode="fail")
    assert r.returncode == 1
    assert "stage copy failed: train_network.py exited with code 1" in r.stderr
    assert "CUDA out of memory (fake)" in r.stderr and "full log:" in r.stderr
    assert "Traceback (most recent call last)" in r.stderr  # the trainer's own last lines, not ours
    assert (tmp_path / "runs" / "t" / "diff-grayscale" / "grayscale.safetensors").exists()  # earlier output kept
    ok = fake(write_preset(train={"steps": 4, "resolution": 64}), "--force")
    assert ok.returncode == 0 and ok.calls == ["copy", "merge", "diff-grayscale"]


def test_killed_trainer_mid_stage_then_resume(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    r = fake(p, mode="kill_at:diff-i")
    assert r.returncode == 1 and "stage diff-i failed" in r.stderr and "code -9" in r.stderr
    assert "lack of memory" in r.stderr
    assert r.calls == ["copy", "merge", "diff-g", "diff-i"]
    assert not (tmp_path / "runs" / "t" / "diff-i" / "i.safetensors").exists()
    again = fake(p)
    assert again.returncode == 0 and again.calls == ["diff-i"]


@pytest.mark.parametrize(
    "mode, message",
    [("nofile", "exited 0 but wrote no copy.safetensors"), ("nan", "holds NaN or Inf"), ("zero", "all lora_up weights are zero")],
)
def test_bad_outputs_fail_the_stage_and_never_become_final(fake, write_preset, tmp_path, mode, message):
    r = fake(write_preset(), mode=mode)
    assert r.returncode == 1 and message in r.stderr
    copy = tmp_path / "runs" / "t" / "copy"
    assert not (copy / "copy.safetensors").exists() and not (copy / "record.json").exists()


def test_ctrl_c_stops_the_trainer_leaves_no_partial_output_and_resumes(write_preset, fake_sd, tmp_path, fake):
    p = write_preset()
    env = dict(os.environ, FAKE_MODE="hang")
    proc = start_cml_to_interrupt("run", str(p), "--sd-scripts", fake_sd, env=env)
    log = tmp_path / "runs" / "t" / "copy" / "log.txt"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and "steps:" in log.read_text()):
        time.sleep(0.2)
    assert log.exists(), "the copy stage never started"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "t" / "copy" / "copy.safetensors").exists()
    ps = subprocess.run(["pgrep", "-f", f"{fake_sd}/train_network.py"], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the trainer outlived cml"
    again = fake(p)
    assert again.returncode == 0 and again.calls == ["copy", "merge", "diff-grayscale"]


def test_sigterm_is_handled_like_ctrl_c(write_preset, fake_sd, tmp_path):
    p = write_preset()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cml", "run", str(p), "--sd-scripts", fake_sd],
        cwd=ROOT,
        env=dict(os.environ, FAKE_MODE="hang"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "runs" / "t" / "copy" / "log.txt"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and "steps:" in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert "[cml] stopped: interrupted" in log.read_text()


def test_second_run_on_the_same_folder_is_refused(fake, write_preset, tmp_path):
    p = write_preset()
    with RunLock(tmp_path / "runs" / "t"):
        r = fake(p)
    assert r.returncode == 2 and "another cml run is using this run folder" in r.stderr and r.calls == []


def test_output_folder_not_writable(fake, write_preset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = fake(write_preset(output_dir=str(blocker / "runs")))
    assert r.returncode == 2 and f"{blocker} is a file, not a folder" in r.stderr  # named as such, not "not writable"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        r = fake(write_preset(output_dir=str(locked)))
        assert r.returncode == 2 and "output folder is not writable" in r.stderr


def test_disk_space_check_comes_before_the_merge_runs(write_preset, tmp_path):
    """Through the real pipeline: the merge stage refuses before merge_lora.py starts, after the copy ran."""
    code = (
        "import shutil, sys; shutil.disk_usage = lambda p: shutil._ntuple_diskusage(10, 10, 10)\n"
        "from cml.cli import main; sys.exit(main(['run', sys.argv[1], '--sd-scripts', sys.argv[2], '--quiet']))"
    )
    calls = tmp_path / "calls.txt"
    r = subprocess.run(
        [sys.executable, "-c", code, str(write_preset()), str(ROOT / "tests" / "fake_sd_scripts")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, FAKE_CALLS=str(calls)),
    )
    assert r.returncode == 2 and "not enough disk space for the copy machine model" in r.stderr
    assert [ln.split()[1] for ln in calls.read_text().splitlines()] == ["copy"]  # merge_lora.py never started


def test_in_memory_mode_runs_no_merge_and_records_the_module(fake, write_preset, tmp_path):
    r = fake(write_preset(merge="in_memory", resize_to=4))
    assert r.returncode == 0, r.stderr
    assert r.calls == ["copy", "diff-grayscale", "resize-grayscale"]
    diff = tmp_path / "runs" / "t" / "diff-grayscale" / "grayscale.safetensors"
    meta = read_metadata(diff)
    assert meta["ss_network_module"] == "networks.lora" and meta["cml_network_module"] == "cml.sd_process.lora"
    assert (tmp_path / "runs" / "t" / "resize-grayscale" / "grayscale_r4.safetensors").exists()


def test_output_to_a_file_is_cmls_lines_and_a_few_progress_lines_per_stage(fake, write_preset, tmp_path):
    """Not a terminal (as here: captured): no trainer output, at most a progress line per ~10% of a stage's steps,
    a few kB for a 500-step run; the trainer's whole output is in each stage's log.txt; --verbose streams it."""
    p = write_preset(train={"steps": 500, "resolution": 64})
    r = fake(p)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "fake train_network.py: loading model" not in out and "avr_loss" not in out
    for stage in ("copy", "diff-grayscale"):
        lines = [ln for ln in out.splitlines() if ln.startswith(f"cml: {stage}: step ")]
        assert 2 <= len(lines) <= 12, lines
        assert lines[-1].startswith(f"cml: {stage}: step 500/500 100%  loss ")
        assert "avr_loss" in (tmp_path / "runs" / "t" / stage / "log.txt").read_text()  # the whole log is kept
    assert len(out.encode()) < 3 * 2048, f"{len(out.encode())} bytes for 3 stages"
    quiet = fake(p, "--from", "copy", "--force", "--quiet")
    assert quiet.returncode == 0 and " step " not in quiet.stderr and "[1/3] copy: done" in quiet.stderr
    loud = fake(p, "--from", "copy", "--force", "--verbose")
    assert "fake train_network.py: loading model" in loud.stdout and "avr_loss" in loud.stderr + loud.stdout


def test_missing_sd_scripts_is_a_clear_error(write_preset, tmp_path):
    r = run_cml("run", str(write_preset()), "--sd-scripts", str(tmp_path))
    assert r.returncode == 2 and "is not an sd-scripts checkout" in r.stderr and "Traceback" not in r.stderr


def test_unpinned_sd_scripts_warns(fake, write_preset):
    r = fake(write_preset())
    assert "not the pinned 48d368fa55" in r.stderr


def test_plan_needs_no_sd_scripts_and_runs_nothing(write_preset, tmp_path):
    """On any machine (a filled submodule included): cml's own lookup is pointed at empty folders."""
    p = write_preset()
    code = (
        "import sys; from pathlib import Path; import cml.sdscripts.lookup as s, cml.prepare as p\n"
        "s.submodule = p.submodule = lambda: Path(sys.argv[3]); s.data_dir = lambda: Path(sys.argv[3])\n"
        "from cml.cli import main; sys.exit(main(['plan', sys.argv[1], '-o', sys.argv[2]]))"
    )
    empty = tmp_path / "no-sd-scripts"
    empty.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", code, str(p), str(tmp_path / "planned"), str(empty)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, CML_SD_SCRIPTS=""),
    )
    assert r.returncode == 0, r.stderr
    assert "warning: sd-scripts not found; commands.sh assumes the sd-scripts/ submodule" in r.stderr
    run = tmp_path / "planned" / "t"
    assert (run / "copy" / "train.toml").exists() and (run / "commands.sh").exists() and (run / "README.md").exists()
    assert not list(run.rglob("*.safetensors"))


def test_broken_sd_scripts_dependencies_point_to_setup(fake, write_preset):
    r = fake(write_preset(), mode="importerror")
    assert r.returncode == 1 and "No module named 'diffusers'" in r.stderr
    assert "sd-scripts' dependencies are broken" in r.stderr and "cml doctor" in r.stderr


def test_grayscale_command_is_the_articles_recipe(fake_sd, image_a, ckpt, tmp_path):
    small = ["--sd-scripts", fake_sd, "--set", "device='cpu'", "--set", "train.resolution=64", "--set", "train.steps=2"]
    small += ["--set", f"tokenizer_cache_dir='{tokenizer_dir()}'"]
    out = tmp_path / "out"
    r = run_cml("grayscale", str(image_a), "--model", str(ckpt), "-o", str(out), *small)
    assert r.returncode == 0, r.stderr
    run = out / "grayscale"
    import tomllib

    resolved = tomllib.loads((run / "preset.toml").read_text())
    assert resolved["targets"]["grayscale"] == {
        "images": [],
        "transform": "grayscale",
        "method": "copy_machine",
        "symmetric": False,
        "each_pair": False,
        "train": {},
    }
    assert resolved["train"]["dim"] == 16 and resolved["train"]["learning_rate"] == 1e-3
    assert (run / "diff-grayscale" / "grayscale.safetensors").exists()
    b = tmp_path / "b.png"
    from PIL import Image

    Image.open(image_a).convert("L").save(b)
    r2 = run_cml("grayscale", str(image_a), str(b), "--model", str(ckpt), "-o", str(tmp_path / "out2"), *small)
    assert r2.returncode == 0, r2.stderr
    resolved = tomllib.loads((tmp_path / "out2" / "grayscale" / "preset.toml").read_text())
    assert resolved["targets"]["grayscale"]["images"] == [str(b)] and "transform" not in resolved["targets"]["grayscale"]


@pytest.mark.parametrize("what", ["truncated image", "lora as base", "missing B"])
def test_bad_input_at_the_cli_is_one_line_exit_2_and_nothing_written(write_preset, tmp_path, image_a, fake_sd, what):
    import torch
    from safetensors.torch import save_file

    if what == "truncated image":
        bad = tmp_path / "cut.png"
        bad.write_bytes(image_a.read_bytes()[:200])
        p = write_preset(source=str(bad))
    elif what == "lora as base":
        lora = tmp_path / "l.safetensors"
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(lora))
        p = write_preset(base_model=str(lora))
    else:
        p = write_preset(targets={"e": {"images": [str(tmp_path / "nope.png")]}})
    for cmd in ("plan", "run"):
        r = run_cml(cmd, str(p), "--sd-scripts", fake_sd)
        assert r.returncode == 2, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:")]
        assert len(errors) == 1 and " -- " in errors[0]  # what, where -- how to fix
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "runs").exists()


def test_cml_itself_never_imports_torch(write_preset, fake_sd):
    """torch costs ~1 s and ~0.4 GB per import: cml's own process stays free of it (device given, not probed)."""
    p = write_preset(resize_to=4)
    code = (
        "import sys; from cml.cli import main; rc = main(['run', sys.argv[1], '--sd-scripts', sys.argv[2], '--quiet']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(p), fake_sd], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"


@pytest.mark.parametrize("mode,shown", [("nanloss", "nan"), ("infloss", "-inf")])
def test_a_non_finite_loss_stops_the_stage_within_a_few_steps(fake, write_preset, tmp_path, mode, shown):
    r = fake(write_preset(), "--quiet", mode=mode)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:")]
    assert len(errors) == 1, r.stderr
    assert f"stage copy stopped: training loss became {shown} at step 3/200" in errors[0]
    assert "likely cause" in errors[0] and "learning_rate" in errors[0]
    log = (tmp_path / "runs" / "t" / "copy" / "log.txt").read_text()
    assert "[cml] stopped: training loss became" in log
    last = max(int(x.split("/")[0].rsplit(" ", 1)[-1]) for x in log.replace("\r", "\n").splitlines() if "/200 [" in x)
    assert last <= 10, f"the trainer ran on to step {last}"
    assert r.calls == ["copy"] and not (tmp_path / "runs" / "t" / "copy" / "copy.safetensors").exists()


def test_a_same_size_change_with_the_mtime_restored_is_not_trusted(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    lora = tmp_path / "runs" / "t" / "diff-g" / "g.safetensors"
    st = lora.stat()
    data = bytearray(lora.read_bytes())
    data[-1] ^= 0x01  # one bit of a weight
    lora.write_bytes(bytes(data))
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = fake(p)
    assert r.returncode == 0, r.stderr
    assert r.calls == ["diff-g"]  # only the damaged file is made again; no --force needed for it
    assert "diff-g/g.safetensors is damaged (changed since it was made): it will be trained again" in r.stderr
    assert "earlier stage" not in r.stderr and "other settings" not in r.stderr


def test_a_truncated_or_missing_output_is_named_as_such(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    run = tmp_path / "runs" / "t"
    lora = run / "diff-i" / "i.safetensors"
    lora.write_bytes(lora.read_bytes()[:100])
    r = fake(p)
    assert r.returncode == 0 and r.calls == ["diff-i"]
    assert "diff-i/i.safetensors is damaged (truncated): it will be trained again" in r.stderr
    (run / "diff-g" / "g.safetensors").unlink()
    r = fake(p)
    assert r.returncode == 0 and r.calls == ["diff-g"]
    assert "diff-g/g.safetensors is missing: it will be trained again" in r.stderr


def test_a_lora_with_its_fingerprint_is_adopted_without_its_record(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    rec = tmp_path / "runs" / "t" / "diff-g" / "record.json"
    rec.unlink()
    r = fake(p)
    assert r.returncode == 0 and r.calls == []
    assert "adopted" in json.loads(rec.read_text())


def test_replacing_the_copy_lora_needs_force_and_names_what_would_be_lost(fake, write_preset):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    other = two_targets(write_preset, copy={"steps": 5})
    r = fake(other)
    assert r.returncode == 2 and r.calls == []
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:"))
    assert "this would replace finished work: copy/copy.safetensors (made from other settings or inputs)" in line
    assert "diff-g/g.safetensors (made from merge/copy_machine.safetensors" in line and "diff-i/i.safetensors" in line
    forced = fake(other, "--force")
    assert forced.returncode == 0 and forced.calls == ["copy", "merge", "diff-g", "diff-i"]


def test_a_damaged_copy_lora_is_redone_but_its_finished_diffs_need_force(fake, write_preset, tmp_path):
    p = two_targets(write_preset)
    assert fake(p).returncode == 0
    copy = tmp_path / "runs" / "t" / "copy" / "copy.safetensors"
    copy.write_bytes(copy.read_bytes()[:64])
    r = fake(p)
    assert r.returncode == 2
    assert "copy/copy.safetensors is damaged (truncated): it will be trained again" in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:"))
    assert "diff-g/g.safetensors (made from merge/copy_machine.safetensors, which will be merged again" in line and "damaged (truncated)" in line
    assert "other settings" not in line


def test_stage_roles_give_names_protection_and_provenance(fake, write_preset, tmp_path):
    from cml.plan import Role
    from tests.conftest import plan_for

    plan = plan_for(write_preset(baseline=True, resize_to=4))
    assert [(s.role, s.target, s.name) for s in plan.stages] == [
        (Role.COPY, None, "copy"), (Role.MERGE, None, "merge"), (Role.DIFF, "grayscale", "diff-grayscale"),
        (Role.NAIVE, "grayscale", "naive-grayscale"), (Role.RESIZE, "grayscale", "resize-grayscale"),
    ]  # fmt: skip
    assert [s.protected for s in plan.stages] == [True, False, True, True, True]
    assert [s.result for s in plan.stages] == [False, False, True, False, True]
    assert r_ok(fake(write_preset(resize_to=4)))
    meta = read_metadata(tmp_path / "runs" / "t" / "resize-grayscale" / "grayscale_r4.safetensors")
    assert meta["cml_trained_against"] == "copy machine model"  # it was "base model" for resized LoRAs


def r_ok(r) -> bool:
    assert r.returncode == 0, r.stderr
    return True
