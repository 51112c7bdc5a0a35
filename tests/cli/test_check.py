"""`cml check` against the fake sd-scripts (fake gen_img.py)."""

import json
import re

import numpy as np
from PIL import Image

from cml.report.figures import HEADER_H, LABEL_W, cell_scale
from tests.conftest import run_cml


def test_check_with_a_fake_generator_writes_grids_metrics_and_report(write_preset, fake_sd, tmp_path):
    """A wiring test: the fake gen_img.py draws by a formula, so the figures here only show that images, metrics,
    grids and the report are connected. tests/sdscripts/test_e2e.py::test_demo_then_check_grids_metrics_report
    checks the same on real sd-scripts output."""
    p = write_preset(
        targets={"grayscale": {"transform": "grayscale"}, "inv": {"transform": "invert"}},
        check={"weights": [-1.0, 0.0, 1.0], "seeds": [1, 2], "prompts": ["", "a red car"], "sampling_steps": 2},
    )
    r = run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "t"
    c = run_cml("check", str(run), "--sd-scripts", fake_sd, "--quiet")
    assert c.returncode == 0, c.stderr
    metrics = json.loads((run / "check" / "metrics.json").read_text())
    assert set(metrics["targets"]) == {"grayscale", "inv"}
    for per_model in metrics["targets"].values():
        assert list(per_model) == ["copy_machine", "base"]  # the copy machine model first, then the base
        for per_weight in per_model.values():
            assert list(per_weight) == ["-1", "0", "1"]
    assert metrics["models"] == {"copy_machine": str(run / "merge" / "copy_machine.safetensors"), "base": str(tmp_path / "base.safetensors")}
    # one generator run per model file: the base (copy check and the base's sweeps), the copy machine model
    assert sorted(d.name for d in (run / "check" / "gen").iterdir()) == ["1-base", "2-copy_machine"]
    sweep_log = (run / "check" / "gen" / "2-copy_machine" / "log.txt").read_text()
    assert str(run / "merge" / "copy_machine.safetensors") in sweep_log  # the merged file is the copy machine model
    sat = {w: v["mean_saturation"] for w, v in metrics["targets"]["grayscale"]["base"].items()}
    assert sat["-1"] > sat["0"] > sat["1"]  # the fake generator desaturates with weight
    assert "mean_pixel_change" in metrics["targets"]["inv"]["base"]["1"]
    for g in metrics["grids"]:
        img = Image.open(g)
        k = cell_scale(64)
        assert img.size == (LABEL_W + 3 * 64 * k, HEADER_H + 4 * 64 * k)  # 2 prompts x 2 seeds rows, 3 weights
    assert len(metrics["copy_check"]["seeds"]) == 2
    # The copy check measures against A as the model's VAE returns it (the fake VAE halves the contrast).
    a = np.asarray(Image.open(run / "check" / "a.png"), dtype=np.float32)
    ref = np.asarray(Image.open(metrics["copy_check"]["reference"]), dtype=np.float32)
    assert ref.shape == (64, 64, 3) and ref.std() < 0.75 * a.std()
    report = (run / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) == 6 and all((run / link).is_file() for link in links)  # copy check, 4 grids, losses
    prompts = (run / "check" / "gen" / "1-base" / "prompts.txt").read_text().splitlines()
    # the copy LoRA, then the two diff LoRAs: the copy check (copy at 0 and 1), each target's sweep; equal weights
    # together (gen_img batches them), the weight-0 images shared
    assert prompts[:4] == ["() --d 1 --am 0.0,-1.0,0.0", "() --d 2 --am 0.0,-1.0,0.0", "a red car --d 1 --am 0.0,-1.0,0.0", "a red car --d 2 --am 0.0,-1.0,0.0"]
    assert "() --d 1 --am 1.0,0.0,0.0" in prompts and "a red car --d 2 --am 0.0,0.0,1.0" in prompts
    assert len(prompts) == len(set(prompts)) == 2 + 2 * (2 * 2 * 2) + 4  # copy at 1; per target 2 non-zero weights x 4; weight 0 x 4
    assert "grayscale on base" in c.stderr  # the terminal table


def test_copy_check_without_the_base_row_draws_no_base_image(write_preset, fake_sd, tmp_path):
    """check.copy_check_base = false (the demo's): the base alone is not drawn; the copy check, its grid and the report
    say so, the copy LoRA's scores are all there."""
    check = {"weights": [0.0, 1.0], "seeds": [1, 2], "prompts": [""], "sampling_steps": 1, "base": False, "copy_check_base": False}
    p = write_preset(merge="in_memory", check=check)
    assert run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet").returncode == 0
    run = tmp_path / "runs" / "t"
    c = run_cml("check", str(run), "--sd-scripts", fake_sd, "--quiet")
    assert c.returncode == 0, c.stderr
    prompts = (run / "check" / "gen" / "1-base" / "prompts.txt").read_text().splitlines()
    assert prompts == ["() --d 1 --am 1.0,0.0", "() --d 2 --am 1.0,0.0", "() --d 1 --am 1.0,1.0", "() --d 2 --am 1.0,1.0"]  # no 0.0,0.0
    seeds = json.loads((run / "check" / "metrics.json").read_text())["copy_check"]["seeds"]
    assert [s["ssim_base"] for s in seeds] == [None, None] and all(0 < s["ssim_copy_lora"] <= 1 for s in seeds)
    k = cell_scale(64)
    assert Image.open(run / "check" / "copy_check.png").size == (LABEL_W + 3 * 64 * k, HEADER_H + 2 * 64 * k)  # A, A (VAE), copy
    assert (run / "report.md").read_text().count("not drawn (check.copy_check_base = false)") == 2


def test_check_sweeps_the_in_memory_copy_machine_as_base_plus_copy_lora(write_preset, fake_sd, tmp_path):
    """merge = "in_memory" writes no copy machine file: the sweep applies the copy LoRA at 1, then the diff LoRA."""
    p = write_preset(merge="in_memory", check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1})
    assert run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet").returncode == 0
    run = tmp_path / "runs" / "t"
    c = run_cml("check", str(run), "--sd-scripts", fake_sd, "--quiet")
    assert c.returncode == 0, c.stderr
    gen = run / "check" / "gen" / "1-base"  # one run: the copy check, the copy machine's and the base's sweeps
    assert sorted(p.name for p in gen.parent.iterdir()) == ["1-base"]
    prompts = (gen / "prompts.txt").read_text().splitlines()
    # the copy machine: copy LoRA at 1, the diff LoRA at 0 and 1; the plain base: the diff LoRA alone
    assert prompts == ["() --d 1 --am 0.0,0.0", "() --d 1 --am 0.0,1.0", "() --d 1 --am 1.0,0.0", "() --d 1 --am 1.0,1.0"]
    argv = (gen / "log.txt").read_text().splitlines()[0]
    copy, diff = run / "copy" / "copy.safetensors", run / "diff-grayscale" / "grayscale.safetensors"
    assert f"--network_weights {copy} {diff} --network_mul 1.0 1.0" in argv
    assert "networks.lora networks.lora" in argv


def test_check_on_a_folder_that_is_not_a_run(tmp_path):
    r = run_cml("check", str(tmp_path))
    assert r.returncode == 2 and "not a cml run folder" in r.stderr


def test_check_follows_a_moved_run_folder(write_preset, fake_sd, tmp_path):
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1})
    assert run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet").returncode == 0
    moved = tmp_path / "elsewhere" / "t"
    moved.parent.mkdir()
    (tmp_path / "runs" / "t").rename(moved)
    c = run_cml("check", str(moved), "--sd-scripts", fake_sd, "--quiet")
    assert c.returncode == 0, c.stderr
    assert (moved / "report.md").is_file() and not (tmp_path / "runs" / "t").exists()


def test_as_vae_round_trip_is_made_once_per_model_a_and_size(write_preset, fake_sd, tmp_path):
    """The copy check's reference is kept in cml's cache: the next check on the same model and A starts no process for it."""
    cache = {"CML_CACHE_DIR": str(tmp_path / "cache")}  # its own: the suite's cache may hold this round trip already
    p = write_preset(check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1, "resolution": 72})
    assert run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet", env=cache).returncode == 0
    run = tmp_path / "runs" / "t"
    assert run_cml("check", str(run), "--sd-scripts", fake_sd, "--quiet", env=cache).returncode == 0
    log = run / "check" / "vae_roundtrip.log"
    made = (run / "check" / "a_vae_roundtrip.png").read_bytes()
    assert log.is_file() and any(f.read_bytes() == made for f in (tmp_path / "cache" / "vae-roundtrip").glob("*.png"))
    log.unlink()
    again = run_cml("check", str(run), "--sd-scripts", fake_sd, "--quiet", env=cache)
    assert again.returncode == 0 and not log.exists()  # read back from the cache
    assert (run / "check" / "a_vae_roundtrip.png").read_bytes() == made


def test_several_as_each_get_their_round_trip_in_one_process_and_the_leakage_names_each(write_preset, fake_sd, tmp_path):
    from tests.conftest import colourful

    colourful((80, 80)).transpose(Image.Transpose.ROTATE_90).resize((96, 96)).save(tmp_path / "a2.png")
    cache = {"CML_CACHE_DIR": str(tmp_path / "cache")}
    p = write_preset(
        source=[str(tmp_path / "a.png"), str(tmp_path / "a2.png")], check={"weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 1}
    )
    assert run_cml("run", str(p), "--sd-scripts", fake_sd, "--quiet", env=cache).returncode == 0
    r = run_cml("check", str(tmp_path / "runs" / "t"), "--sd-scripts", fake_sd, "--quiet", env=cache)
    assert r.returncode == 0, r.stderr
    check = tmp_path / "runs" / "t" / "check"
    assert (check / "a_vae_roundtrip.png").is_file() and (check / "a-2_vae_roundtrip.png").is_file()
    assert (check / "vae_roundtrip.log").read_text().count("fake load_vae") == 1  # both As through one load of the VAE
    assert (check / "a_vae_roundtrip.png").read_bytes() != (check / "a-2_vae_roundtrip.png").read_bytes()
    m = json.loads((check / "metrics.json").read_text())
    assert len(m["copy_check"]["references"]) == 2
    seed = m["copy_check"]["seeds"][0]
    assert len(seed["ssim_copy_lora_to_each_a"]) == 2 and seed["ssim_copy_lora"] == max(seed["ssim_copy_lora_to_each_a"])
    assert set(m["leakage_to_each_a"]) == set(m["targets"])
    for lora, per_model in m["targets"].items():
        for model, per_weight in per_model.items():
            for w, v in per_weight.items():
                each = m["leakage_to_each_a"][lora][model][w]
                assert len(each) == 2 and v["ssim_to_a"] >= max(each) - 1e-9
    report = (tmp_path / "runs" / "t" / "report.md").read_text()
    assert "the nearest" in report and "## Leakage to each A" in report
