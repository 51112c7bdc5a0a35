"""The user's files are sacred, against the fake sd-scripts: damaged, changed or odd outputs, records and folders."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_checkpoint, run_cml


@pytest.fixture
def fake(tmp_path, fake_sd):
    calls = tmp_path / "calls.txt"

    def run(*args: str, mode: str = "ok", cmd: str = "run", env: dict | None = None):
        calls.write_text("")
        r = run_cml(cmd, *args, "--sd-scripts", fake_sd, env={"FAKE_MODE": mode, "FAKE_CALLS": str(calls), **(env or {})})
        r.calls = [ln.split()[1] for ln in calls.read_text().splitlines()]
        return r

    return run


def content(path: Path) -> str:
    from cml.safetensors_file import file_and_content_sha256

    return file_and_content_sha256(path)[1]


def one_line_exit_2(r, what: str) -> None:
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("cml: error:")]
    assert r.returncode == 2 and len(errors) == 1 and what in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine\n")
    (folder / "README.md").write_text("my readme\n")
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "logs" / "diary.txt").write_text("mine too\n")
    (folder / "work").mkdir(exist_ok=True)
    (folder / "work" / "draft.png").write_bytes(b"not cml's")
    return folder


@pytest.mark.parametrize("marker", ["run.json", ".cml.lock", ".cml.pid"])
def test_a_user_folder_holding_an_old_marker_name_is_not_adopted(write_preset, tmp_path, fake, marker):
    mine = user_files(tmp_path / "runs" / "t")
    (mine / marker).write_text('{"my": "settings"}')
    before = checksums(mine)
    r = fake(str(write_preset()))
    one_line_exit_2(r, "holds files cml did not make")
    assert r.calls == [] and checksums(mine) == before


def test_a_run_json_alone_that_cml_did_not_write_is_not_adopted(write_preset, tmp_path, fake):
    mine = tmp_path / "runs" / "t"
    mine.mkdir(parents=True)
    (mine / "run.json").write_text('{"stages_run": "my own file"}')
    r = fake(str(write_preset()))
    one_line_exit_2(r, "a run.json that cml did not write")
    assert (mine / "run.json").read_text() == '{"stages_run": "my own file"}'


@pytest.mark.parametrize("link", ["copy", "merge", "copy/logs", "diff-grayscale/work", "check"])
def test_links_in_a_run_folder_are_never_followed(write_preset, tmp_path, fake, link):
    """A stage folder (or one inside it) that is a link to the user's files: refused before anything is deleted or written."""
    p = write_preset()
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    mine = user_files(tmp_path / "mine")
    around = user_files(tmp_path / "around")  # a user folder beside the run: never touched either
    before, before_around = checksums(mine), checksums(around)
    target = run / link
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(mine, target_is_directory=True)
    for args in ([str(p)], [str(p), "--force", "--from", "copy"], [str(write_preset(train={"steps": 4, "resolution": 64})), "--force"]):
        r = fake(*args)
        one_line_exit_2(r, "symbolic link")
        assert r.calls == []
    for args in (["plan", str(p)], ["check", str(run)]):
        one_line_exit_2(fake(*args[1:], cmd=args[0]), "symbolic link")
    assert checksums(mine) == before and checksums(around) == before_around


def test_a_forged_marker_beside_the_users_files_is_not_trusted(write_preset, tmp_path, fake):
    mine = user_files(tmp_path / "runs" / "t")
    (mine / ".cml-run").write_text(json.dumps({"schema_version": 1, "run_id": "f" * 32}))
    before = checksums(mine)
    one_line_exit_2(fake(str(write_preset())), "holds files cml did not make")
    one_line_exit_2(fake(str(write_preset()), cmd="plan"), "holds files cml did not make")
    assert checksums(mine) == before


def test_a_marker_cml_did_not_write_is_named(write_preset, tmp_path, fake):
    d = tmp_path / "runs" / "t"
    d.mkdir(parents=True)
    (d / ".cml-run").write_text("hello")
    one_line_exit_2(fake(str(write_preset())), "holds a .cml-run marker cml did not write")


@pytest.mark.parametrize("inner", ["copy/work", "check", "diff-grayscale"])
def test_a_run_inside_another_run_folder_is_refused(write_preset, tmp_path, fake, inner):
    assert fake(str(write_preset())).returncode == 0
    outer = tmp_path / "runs" / "t"
    nested = write_preset(output_dir=str(outer / inner), name="nested", filename="nested.toml")
    one_line_exit_2(fake(str(nested)), f"inside another cml run folder ({outer})")
    assert not (outer / inner / "nested").exists()


def test_run_json_of_another_run_is_refused(write_preset, tmp_path, fake):
    assert fake(str(write_preset())).returncode == 0
    run = tmp_path / "runs" / "t"
    data = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**data, "run_id": "0" * 32}))
    one_line_exit_2(fake(str(write_preset())), "run.json names another run")


def test_an_old_run_folder_of_cml_0_1_is_still_cmls(write_preset, tmp_path, fake):
    """Folders made before markers had a run id: their .cml-run and run.json as cml 0.1 wrote them."""
    p = write_preset()
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    (run / ".cml-run").write_text(json.dumps({"cml": "0.1.0", "note": "a cml run folder: cml writes here"}) + "\n")
    old = json.loads((run / "run.json").read_text())
    old.pop("schema_version"), old.pop("run_id")
    (run / "run.json").write_text(json.dumps(old))
    r = fake(str(p))
    assert r.returncode == 0, r.stderr
    assert json.loads((run / ".cml-run").read_text())["schema_version"] == 1  # re-marked with a run id


def test_a_shrunk_source_list_leaves_no_old_image_to_train_on(write_preset, tmp_path, fake, image_a):
    b = tmp_path / "a2.png"
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(b)
    p2 = write_preset(source=[str(image_a), str(b)], train={"steps": 3, "resolution": 64, "caption": "a photo"})
    assert fake(str(p2)).returncode == 0
    copy_images = tmp_path / "runs" / "t" / "copy" / "images"
    assert sorted(x.name for x in copy_images.iterdir()) == ["000.png", "000.txt", "001.png", "001.txt"]
    p1 = write_preset(source=[str(image_a)])  # one image, and no caption
    assert fake(str(p1), cmd="plan").returncode == 0
    assert sorted(x.name for x in copy_images.iterdir()) == ["000.png"]
    diff_images = tmp_path / "runs" / "t" / "diff-grayscale" / "images"
    assert sorted(x.name for x in diff_images.iterdir()) == ["000.png"]


def test_cached_latents_of_other_inputs_are_never_trained_on(write_preset, tmp_path, fake):
    p = write_preset(train={"steps": 3, "resolution": 64, "extra": {"cache_latents_to_disk": True}})
    assert fake(str(p)).returncode == 0
    images = tmp_path / "runs" / "t" / "copy" / "images"
    stale = images / "000_0064x0064_sd.npz"  # what sd-scripts leaves beside an image it cached
    stale.write_bytes(b"latents of another A")
    (images / "001.png").write_bytes(b"an image of an earlier, longer source list")
    assert fake(str(p), cmd="plan").returncode == 0  # re-planning already makes the folder exact
    assert sorted(x.name for x in images.iterdir()) == ["000.png"]
    stale.write_bytes(b"latents of another A")
    r = fake(str(p), "--from", "copy", "--force")  # and each stage rebuilds its images before it trains
    assert r.returncode == 0 and r.calls[0] == "copy" and not stale.exists()


@pytest.mark.parametrize("change", [{"targets": {"grayscale": {"transform": "invert"}}}, {"train": {"steps": 4, "resolution": 64}}, "other A"])
def test_check_refuses_loras_trained_with_other_settings_than_the_run_folder_now_holds(write_preset, tmp_path, fake, change):
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1})
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    if change == "other A":
        other = tmp_path / "other-a.png"
        Image.fromarray(np.full((96, 96, 3), 30, np.uint8)).save(other)
        change = {"source": str(other)}
    assert fake(str(write_preset(**change)), cmd="plan").returncode == 0  # rewrites the run folder's preset.toml
    r = fake(str(run), cmd="check")
    one_line_exit_2(r, "was made from other settings or inputs than")
    assert not (run / "report.md").exists()
    suggested = r.stderr.split("`")[1]  # the command the message suggests works as written
    assert suggested == f"cml run {run / 'preset.toml'}"
    again = fake(str(run / "preset.toml"), "--force")
    assert again.returncode == 0, again.stderr
    assert fake(str(run), cmd="check").returncode == 0


def test_check_on_a_run_that_never_ran_suggests_a_command_that_works(write_preset, tmp_path, fake):
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1})
    assert fake(str(p), cmd="plan").returncode == 0
    run = tmp_path / "runs" / "t"
    r = fake(str(run), cmd="check")
    one_line_exit_2(r, "copy/copy.safetensors is missing")
    cmd = r.stderr.split("`")[1].split()
    assert cmd[:2] == ["cml", "run"]
    assert fake(*cmd[2:]).returncode == 0 and fake(str(run), cmd="check").returncode == 0


def test_check_of_a_renamed_run_folder_with_a_space(write_preset, tmp_path, fake):
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1})
    assert fake(str(p)).returncode == 0
    renamed = tmp_path / "runs" / "my renamed run"
    (tmp_path / "runs" / "t").rename(renamed)
    r = fake(str(renamed), cmd="check")
    assert r.returncode == 0, r.stderr
    assert (renamed / "report.md").is_file()


def test_check_models_of_one_name_and_a_model_named_copy_machine_get_their_own_labels(write_preset, tmp_path, fake):
    m1 = make_checkpoint((tmp_path / "one").mkdir() or tmp_path / "one" / "model.safetensors")
    m2 = make_checkpoint((tmp_path / "two").mkdir() or tmp_path / "two" / "model.safetensors")
    cm = make_checkpoint(tmp_path / "copy_machine.safetensors")
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1, "models": [str(m1), str(m2), str(cm)]})
    assert fake(str(p)).returncode == 0
    c = fake(str(tmp_path / "runs" / "t"), cmd="check")
    assert c.returncode == 0, c.stderr
    metrics = json.loads((tmp_path / "runs" / "t" / "check" / "metrics.json").read_text())
    labels = list(metrics["targets"]["grayscale"])
    assert labels == ["copy_machine", "model-1", "model-2", "copy_machine-3"]
    assert metrics["models"]["model-1"] == str(m1) and metrics["models"]["model-2"] == str(m2) and metrics["models"]["copy_machine-3"] == str(cm)
    assert metrics["models"]["copy_machine"] == str(tmp_path / "runs" / "t" / "merge" / "copy_machine.safetensors")
    assert len(set(metrics["grids"])) == 4 and all(Path(g).is_file() for g in metrics["grids"])
    report = (tmp_path / "runs" / "t" / "report.md").read_text()
    assert f"| model-2 | `{m2}` |" in report and f"### grayscale on model-1 (`{m1}`)" in report


@pytest.mark.parametrize("damage", ["deleted", "changed"])
def test_a_lost_copy_machine_model_is_made_again_and_the_diff_loras_are_kept(write_preset, tmp_path, fake, damage):
    p = write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert"}})
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    cm = run / "merge" / "copy_machine.safetensors"
    before = content(cm)
    diffs = {t: (run / f"diff-{t}" / f"{t}.safetensors").read_bytes() for t in ("g", "i")}
    if damage == "deleted":
        cm.unlink()  # to save disk
    else:
        data = bytearray(cm.read_bytes())
        data[-1] ^= 1
        cm.write_bytes(bytes(data))
    r = fake(str(p))  # no --force needed: nothing finished is replaced
    assert r.returncode == 0, r.stderr
    assert r.calls == ["merge"]
    assert content(cm) == before  # the same tensors (the merge is deterministic); its metadata's date is new
    assert {t: (run / f"diff-{t}" / f"{t}.safetensors").read_bytes() for t in ("g", "i")} == diffs
    assert "[3/4] diff-g: up to date, skipped" in r.stderr


def test_a_copy_machine_made_again_that_differs_keeps_the_diff_loras_until_force(write_preset, tmp_path, fake):
    p = write_preset()
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    (run / "merge" / "copy_machine.safetensors").unlink()
    diff = (run / "diff-grayscale" / "grayscale.safetensors").read_bytes()
    r = fake(str(p), env={"FAKE_MERGE_SALT": "0.5"})  # a merge that does not give the same bytes again
    one_line_exit_2(r, "merge/copy_machine.safetensors was made again and differs from the one diff-grayscale/grayscale.safetensors was made from")
    assert r.calls == ["merge"] and (run / "diff-grayscale" / "grayscale.safetensors").read_bytes() == diff
    forced = fake(str(p), "--force", env={"FAKE_MERGE_SALT": "0.5"})
    assert forced.returncode == 0 and forced.calls == ["diff-grayscale"]


@pytest.mark.parametrize(
    "extra, kept", [({"sample_prompts": "prompts.txt"}, "extra/sample/copy_000001.png"), ({"save_every_n_steps": 1}, "extra/copy-step00000001.safetensors")]
)
def test_files_train_extra_asks_for_are_kept_beside_the_output(write_preset, tmp_path, fake, extra, kept):
    p = write_preset(train={"steps": 3, "resolution": 64, "extra": extra})
    r = fake(str(p))
    assert r.returncode == 0, r.stderr
    copy = tmp_path / "runs" / "t" / "copy"
    assert (copy / kept).is_file() and not (copy / "work").exists()
    moved = "/".join(kept.split("/")[:2])  # what the trainer wrote at the top of work/, moved as it is
    assert f"also kept: {copy / moved}" in r.stderr
    assert json.loads((copy / "record.json").read_text())["extra_files"] == [moved]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_base_model_with_non_finite_unet_weights_is_refused_before_anything_runs(write_preset, tmp_path, fake, value):
    from safetensors.torch import load_file, save_file

    ckpt = make_checkpoint(tmp_path / "broken.safetensors")
    sd = load_file(str(ckpt))
    sd["model.diffusion_model.out.2.weight"][0, 0] = value
    save_file(sd, str(ckpt))
    r = fake(str(write_preset(base_model=str(ckpt))))
    one_line_exit_2(r, "the checkpoint's U-Net holds NaN or Inf in 1 tensor(s), e.g. model.diffusion_model.out.2.weight")
    assert r.calls == [] and not (tmp_path / "runs").exists()


def test_nan_at_the_first_step_is_not_blamed_on_the_learning_rate(write_preset, fake):
    r = fake(str(write_preset()), mode="nanloss1")
    assert r.returncode == 1
    assert "training loss became nan at step 1/200" in r.stderr and "at the very first step" in r.stderr
    assert "learning rate" not in r.stderr.split("at the very first step")[1].split("\n")[0]


def test_a_full_disk_is_one_line_and_the_checked_lora_is_taken_up_by_the_next_run(write_preset, tmp_path, fake_sd):
    """ENOSPC while cml writes the final LoRA: named with the space left; the LoRA in work/ is not trained again."""
    p = write_preset()
    calls = tmp_path / "calls.txt"
    code = (
        "import errno, sys\n"
        "import cml.finish as p\n"
        "real = p.add_metadata\n"
        "def full(src, dst, meta):\n"
        "    if 'diff-' in str(dst):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(dst))\n"
        "    return real(src, dst, meta)\n"
        "p.add_metadata = full\n"
        "from cml.cli import main\n"
        "sys.exit(main(['run', sys.argv[1], '--sd-scripts', sys.argv[2]]))\n"
    )
    env = dict(os.environ, FAKE_CALLS=str(calls))
    r = subprocess.run([sys.executable, "-c", code, str(p), fake_sd], capture_output=True, text=True, cwd=ROOT, env=env)
    one_line_exit_2(r, "the disk is full: grayscale.safetensors could not be written")
    assert "MiB free" in r.stderr and "the checked output is kept in" in r.stderr
    work = tmp_path / "runs" / "t" / "diff-grayscale" / "work"
    assert (work / "grayscale.safetensors").is_file()
    calls.write_text("")
    again = run_cml("run", str(p), "--sd-scripts", fake_sd, env={"FAKE_CALLS": str(calls)})
    assert again.returncode == 0, again.stderr
    assert calls.read_text() == "" and "adopted, not made again" in again.stderr  # nothing trained again
    assert not work.exists() and (tmp_path / "runs" / "t" / "diff-grayscale" / "grayscale.safetensors").is_file()


def test_a_trainer_that_runs_out_of_disk_is_named_so(write_preset, fake):
    one_line_exit_2(fake(str(write_preset()), mode="nospace"), "the disk is full: stage copy's script could not write")


@pytest.mark.parametrize("case", ["dangling", "looping", "proc", "long name", "lock folder", "pid folder", "run.json folder"])
def test_odd_run_folders_are_one_line_exit_2(write_preset, tmp_path, fake, case):
    runs = tmp_path / "runs"
    runs.mkdir()
    top: dict = {}
    if case == "dangling":
        (runs / "t").symlink_to(tmp_path / "nowhere")
        what = "broken or looping symbolic link"
    elif case == "looping":
        (runs / "t").symlink_to(runs / "t")
        what = "broken or looping symbolic link"
    elif case == "proc":
        top = {"output_dir": "/proc"}
        what = "/proc"
    elif case == "long name":
        top = {"output_dir": str(tmp_path / ("x" * 300))}
        what = "bytes long (at most 255)"
    else:
        assert fake(str(write_preset())).returncode == 0
        name = {"lock folder": ".cml.lock", "pid folder": ".cml.pid", "run.json folder": "run.json"}[case]
        (runs / "t" / name).unlink()
        (runs / "t" / name).mkdir()
        what = f"{name} in the run folder is not a file"
    for cmd in ("plan", "run"):
        r = fake(str(write_preset(**top)), cmd=cmd)
        one_line_exit_2(r, what)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema_version": 1, "stage": 5}'])
def test_a_malformed_record_is_named_and_its_output_checked_again(write_preset, tmp_path, fake, content):
    p = write_preset()
    assert fake(str(p)).returncode == 0
    rec = tmp_path / "runs" / "t" / "diff-grayscale" / "record.json"
    rec.write_text(content)
    r = fake(str(p))
    assert r.returncode == 0, r.stderr
    assert "diff-grayscale/record.json is not a record cml can read" in r.stderr
    assert r.calls == []  # the LoRA's own metadata carries the fingerprint: adopted, not trained again
    assert json.loads(rec.read_text())["adopted"]


def test_a_malformed_hash_cache_is_rebuilt(write_preset, fake):
    from cml.cache import SHA256
    from cml.paths import cache_root

    cache = cache_root() / "sha256.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("{broken")
    assert fake(str(write_preset()), cmd="plan").returncode == 0
    assert json.loads(cache.read_text())["version"] == SHA256.version


def test_a_base_model_changed_in_place_with_size_and_mtime_restored_is_hashed_again(write_preset, fake, ckpt):
    p = write_preset()
    assert fake(str(p)).returncode == 0
    st = ckpt.stat()
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    ckpt.write_bytes(bytes(data))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = fake(str(p))
    assert r.returncode == 2 and "copy/copy.safetensors (made from other settings or inputs)" in r.stderr


def test_the_check_after_a_run_writes_under_the_runs_lock(write_preset, tmp_path, fake):
    probe = tmp_path / "probe.txt"
    r = fake(str(write_preset(check={"enabled": True, "weights": [0.0, 1.0], "seeds": [1], "prompts": [""]})), env={"FAKE_LOCK_PROBE": str(probe)})
    assert r.returncode == 0, r.stderr
    assert probe.read_text().split() and set(probe.read_text().split()) == {"True"}  # every generator run found it held


@pytest.mark.parametrize("damage", ["metadata edited", "record size", "record deleted"])
def test_an_intact_lora_whose_record_disagrees_is_kept_and_its_record_made_again(write_preset, tmp_path, fake, damage):
    from cml.safetensors_file import add_metadata

    p = write_preset()
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    lora, rec = run / "diff-grayscale" / "grayscale.safetensors", run / "diff-grayscale" / "record.json"
    if damage == "metadata edited":
        tmp = tmp_path / "edited.safetensors"
        add_metadata(lora, tmp, {"ss_tag_frequency": "{}"})
        tmp.replace(lora)
    elif damage == "record size":
        data = json.loads(rec.read_text())
        rec.write_text(json.dumps(data | {"output_size": data["output_size"] + 7}))
    else:
        rec.unlink()
    kept = content(lora)
    r = fake(str(p))  # no --force: nothing finished is replaced
    assert r.returncode == 0, r.stderr
    assert "diff-grayscale" not in r.calls and content(lora) == kept
    assert json.loads(rec.read_text())["output_sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()


def test_two_loras_swapped_are_not_replaced_without_force(write_preset, tmp_path, fake):
    p = write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert"}})
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    g, i = run / "diff-g" / "g.safetensors", run / "diff-i" / "i.safetensors"
    gb, ib = g.read_bytes(), i.read_bytes()
    g.write_bytes(ib)
    i.write_bytes(gb)
    r = fake(str(p))
    one_line_exit_2(r, "this would replace finished work")
    assert "diff-g/g.safetensors (made from other settings or inputs)" in r.stderr and r.calls == []


def test_a_deleted_marker_does_not_lock_the_user_out_of_the_run(write_preset, tmp_path, fake):
    p = write_preset()
    assert fake(str(p)).returncode == 0
    run = tmp_path / "runs" / "t"
    (run / ".cml-run").unlink()
    assert fake(str(p), cmd="plan").returncode == 0
    again = fake(str(p))
    assert again.returncode == 0 and again.calls == [], again.stderr
    assert fake(str(run), cmd="check").returncode == 0


def test_a_moved_run_folder_is_worked_on_where_it_is_now(write_preset, tmp_path, fake):
    p = write_preset()
    assert fake(str(p)).returncode == 0
    moved = tmp_path / "elsewhere" / "t2"
    moved.parent.mkdir()
    (tmp_path / "runs" / "t").rename(moved)
    r = fake(str(moved / "preset.toml"))
    assert r.returncode == 0 and r.calls == [], r.stderr  # up to date where it is now
    assert not (tmp_path / "runs" / "t").exists()  # nothing written at its old place
    assert fake(str(moved / "preset.toml"), cmd="plan").returncode == 0 and not (tmp_path / "runs" / "t").exists()


@pytest.mark.parametrize("odd", ["lora is a folder", "record is a folder", "images is a file"])
def test_odd_entries_in_a_stage_folder_are_named_before_anything_runs(write_preset, tmp_path, fake, odd):
    import shutil

    p = write_preset()
    assert fake(str(p)).returncode == 0
    st = tmp_path / "runs" / "t" / "diff-grayscale"
    name = {"lora is a folder": "grayscale.safetensors", "record is a folder": "record.json", "images is a file": "images"}[odd]
    path = st / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir() if odd != "images is a file" else path.write_text("x")
    r = fake(str(p), "--force")
    one_line_exit_2(r, f"diff-grayscale/{name} is a")
    assert r.calls == []


def test_a_refused_from_leaves_no_folder_behind(write_preset, tmp_path, fake):
    r = fake(str(write_preset()), "--from", "nosuch")
    one_line_exit_2(r, "--from 'nosuch' is not a stage of this run")
    assert not (tmp_path / "runs" / "t").exists()


def test_plan_over_a_finished_run_names_the_work_made_from_other_settings(write_preset, tmp_path, fake):
    assert fake(str(write_preset())).returncode == 0
    r = fake(str(write_preset(train={"steps": 4, "resolution": 64})), cmd="plan")
    assert r.returncode == 0 and "diff-grayscale/grayscale.safetensors was made from other settings than this plan's" in r.stderr


@pytest.mark.parametrize(
    "top, message",
    [
        ({"source": "~nosuchuser_cml/a.png"}, "write the path out in full"),
        ({"train": {"steps": 3, "resolution": 64, "extra": {"noise_offset": 2**70}}}, "beyond 64 bits"),
        ({"check": {"seeds": [2**40]}}, "check.seeds.0"),
        ({"targets": {"x": {"transform": "grayscale", "symmetric": True}, "x_slider": {"transform": "invert"}}}, "named x_slider, as target"),
        (
            {"targets": {"g": {"transform": "grayscale", "method": "direct", "steps": 80}}, "train": {"warmup_steps": 100, "steps": 500}},
            "warmup_steps (100) must be below steps (80)",
        ),
    ],
)
def test_values_that_would_break_later_are_refused_now(write_preset, fake, top, message):
    r = fake(str(write_preset(**top)))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_preset_nested_too_deep_is_one_line(tmp_path, fake):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_exit_2(fake(str(p)), "nest too deep")
