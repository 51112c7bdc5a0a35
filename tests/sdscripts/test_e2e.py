"""End to end on the real sd-scripts, the full tier (`make test-full`): both merge modes, two targets on one copy
machine, resize, the module-list defect cml works around, resume after an interrupt, the check run again.
The SD1.5-architecture demo model at 64 px on the CPU; each run costs minutes, so runs are module fixtures shared by
the tests that read them. The demo itself (the fast tier) is tests/sdscripts/test_demo.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from cml.records import StageRecord, read
from cml.safetensors_file import read_metadata
from tests.conftest import read_json, run_cml, start_cml_to_interrupt
from tests.conftest import sd_preset as preset

pytestmark = pytest.mark.full  # the full tier: `make test-full`


def run_ok(p: Path, *args: str) -> subprocess.CompletedProcess:
    r = run_cml("run", str(p), "--quiet", *args, timeout=1800)
    assert r.returncode == 0, f"cml run failed:\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def checkpoint_run(demo_assets, tmp_path_factory):
    """Checkpoint merge, two targets on one copy machine, 100 copy steps, the naive LoRAs on."""
    tmp = tmp_path_factory.mktemp("ckpt")
    p = preset(
        tmp,
        demo_assets,
        baseline=True,
        copy={"steps": 100},
        diff={"steps": 8},
        targets={"grayscale": {"transform": "grayscale"}, "invert": {"transform": "invert"}},
    )
    r = run_ok(p)
    return {"dir": tmp / "runs" / "e2e", "result": r, "preset": p}


@pytest.fixture(scope="module")
def in_memory_run(demo_assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mem")
    p = preset(tmp, demo_assets, merge="in_memory", resize_to=4)
    r = run_ok(p)
    return {"dir": tmp / "runs" / "e2e", "result": r, "preset": p}


def test_two_targets_share_one_copy_machine(checkpoint_run):
    run = read_json(checkpoint_run["dir"] / "run.json")
    assert run["stages_run"] == ["copy", "merge", "diff-grayscale", "naive-grayscale", "diff-invert", "naive-invert"]
    merged = checkpoint_run["dir"] / "merge" / "copy_machine.safetensors"
    rec = read_json(checkpoint_run["dir"] / "merge" / "record.json")
    assert merged.is_file() and rec["merge_check"]["unet_tensors_changed"] > 0
    for t in ("grayscale", "invert"):
        assert read_json(checkpoint_run["dir"] / f"diff-{t}" / "record.json")["fingerprint"]
        toml_text = (checkpoint_run["dir"] / f"diff-{t}" / "train.toml").read_text()
        assert str(merged) in toml_text  # trained against the copy machine model


@pytest.mark.parametrize("target", ["grayscale", "invert"])
def test_final_loras_carry_provenance_and_their_records_hold(checkpoint_run, target):
    d = checkpoint_run["dir"]
    lora = d / f"diff-{target}" / f"{target}.safetensors"
    rec = read(StageRecord, d / f"diff-{target}" / "record.json")
    assert rec is not None and rec.lora_modules == 192  # U-Net only, SD1.5 attention
    import hashlib

    assert rec.output_sha256 == hashlib.sha256(lora.read_bytes()).hexdigest() and rec.output_size == lora.stat().st_size
    meta = read_metadata(lora)
    assert meta["ss_network_dim"] == "16" and meta["ss_network_alpha"] in ("16.0", "16")
    assert meta["cml_target"] == target and meta["cml_merge_mode"] == "checkpoint" and meta["cml_fingerprint"] == rec.fingerprint
    assert meta["cml_base_model_hash"].startswith("sha256:") and len(json.loads(meta["cml_images_sha256"])["A"][0]) == 64
    assert meta["cml_sd_scripts_commit"] == "48d368fa557731ad0488c07304dfeba8c07910eb"


def test_both_diffs_trained_against_the_one_copy_machine_model(checkpoint_run):
    d = checkpoint_run["dir"]
    merge_rec = read(StageRecord, d / "merge" / "record.json")
    assert merge_rec is not None
    for t in ("grayscale", "invert"):
        rec = read(StageRecord, d / f"diff-{t}" / "record.json")
        assert rec is not None and rec.inputs == {"merge": merge_rec.output_content}


def test_in_memory_mode_writes_no_merged_model_and_trains_the_same_modules(in_memory_run, checkpoint_run):
    d = in_memory_run["dir"]
    assert not (d / "merge").exists()
    lora = d / "diff-grayscale" / "grayscale.safetensors"
    with safe_open(str(lora), "numpy") as f:
        mem_keys = set(f.keys())
    with safe_open(str(checkpoint_run["dir"] / "diff-grayscale" / "grayscale.safetensors"), "numpy") as f:
        ckpt_keys = set(f.keys())
    assert mem_keys == ckpt_keys and len(mem_keys) == 576
    meta = read_metadata(lora)
    assert meta["cml_merge_mode"] == "in_memory" and meta["ss_network_module"] == "networks.lora"


def test_resize_to_writes_a_smaller_rank_beside_the_full_one(in_memory_run):
    d = in_memory_run["dir"]
    small = d / "resize-grayscale" / "grayscale_r4.safetensors"
    with safe_open(str(small), "numpy") as f:
        downs = {k.removesuffix(".lora_down.weight"): f.get_tensor(k).shape[0] for k in f.keys() if k.endswith("lora_down.weight")}
        alphas = {k.removesuffix(".alpha"): float(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha")}
    assert len(downs) == 192 and max(downs.values()) == 4  # rank 4 (resize_lora.py's rank-1 stand-ins aside)
    assert set(downs.values()) <= {1, 4} and alphas.keys() == downs.keys()
    assert all(alphas[m] == downs[m] for m in downs)  # alpha / rank kept at the trained 16 / 16, stand-ins included
    assert (d / "diff-grayscale" / "grayscale.safetensors").is_file()
    assert read_metadata(small)["cml_stage"] == "resize-grayscale"
    assert read_metadata(small)["cml_trained_against"] == "copy machine model"  # a resized diff LoRA is still a diff


def test_without_cmls_module_fix_plain_base_weights_trains_more_modules(in_memory_run, sd_scripts, tmp_path):
    """The defect cml works around: the same diff stage with plain networks.lora trains time_emb_proj too."""
    import toml
    import tomli_w as w

    cfg = toml.load(in_memory_run["dir"] / "diff-grayscale" / "train.toml")
    cfg.update(network_module="networks.lora", output_dir=str(tmp_path), logging_dir=str(tmp_path / "logs"), max_train_steps=1)
    (tmp_path / "train.toml").write_text(w.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(sd_scripts.path))
    r = subprocess.run(
        [sys.executable, "train_network.py", "--config_file", str(tmp_path / "train.toml")],
        cwd=sd_scripts.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with safe_open(str(tmp_path / "grayscale.safetensors"), "numpy") as f:
        keys = set(f.keys())
    assert len(keys) == 684 and any("time_emb_proj" in k for k in keys)


def test_resume_after_kill_during_the_diff_stage(demo_assets, tmp_path):
    p = preset(tmp_path, demo_assets, diff={"steps": 60})
    run = tmp_path / "runs" / "e2e"
    proc = start_cml_to_interrupt("run", str(p), "--quiet")
    log = run / "diff-grayscale" / "log.txt"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not (log.exists() and "steps:" in log.read_text(errors="replace")):
        time.sleep(1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert not (run / "diff-grayscale" / "grayscale.safetensors").exists()
    copy_rec, merge_rec = read_json(run / "copy" / "record.json"), read_json(run / "merge" / "record.json")

    again = run_ok(p)
    assert "[1/3] copy: up to date, skipped" in again.stderr and "[2/3] merge: up to date, skipped" in again.stderr
    assert read_json(run / "copy" / "record.json") == copy_rec and read_json(run / "merge" / "record.json") == merge_rec
    assert read_json(run / "run.json")["stages_run"] == ["diff-grayscale"]
    assert read(StageRecord, run / "diff-grayscale" / "record.json") is not None  # finished and validated by cml


def test_check_again_gives_the_same_images(demo_run):
    """Fixed seeds: `cml check` run again on the demo's run folder draws the same images, byte for byte."""
    from PIL import Image

    gen = demo_run["dir"] / "check" / "gen"
    first = {p.relative_to(gen): Image.open(p).tobytes() for p in sorted(gen.rglob("im_*.png"))}
    again = run_cml("check", str(demo_run["dir"]), "--quiet", timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert first and {p.relative_to(gen): Image.open(p).tobytes() for p in sorted(gen.rglob("im_*.png"))} == first


def test_each_pair_averages_the_pairs_diff_loras_into_one(demo_assets, tmp_path):
    """Two A images, one copy machine and one diff LoRA each (in memory), averaged by merge_lora.py --concat: the kept
    LoRA's change to each module is the mean of the pairs' changes, at twice the rank, and its metadata says so."""
    import numpy as np
    from PIL import Image, ImageOps

    from cml.safetensors_file import read_metadata

    a2 = tmp_path / "a2.png"
    ImageOps.mirror(Image.open(demo_assets["a"]).convert("RGB")).save(a2)
    p = preset(tmp_path, demo_assets, merge="in_memory", source=[str(demo_assets["a"]), str(a2)], copy={"steps": 2}, diff={"steps": 2})
    p.write_text(p.read_text().replace('transform = "grayscale"', 'transform = "grayscale"\neach_pair = true'))
    run_ok(p)
    run = tmp_path / "runs" / "e2e"
    avg = run / "average-grayscale" / "grayscale.safetensors"
    pairs = [run / f"diff-grayscale-p{i}" / f"grayscale_p{i}.safetensors" for i in (1, 2)]
    meta = read_metadata(avg)
    assert meta["ss_network_dim"] == "32" and "mean of 2 pairs" in meta["cml_average"]

    def change(path, m):
        with safe_open(str(path), "np") as f:
            down, up = f.get_tensor(f"{m}.lora_down.weight").astype(np.float32), f.get_tensor(f"{m}.lora_up.weight").astype(np.float32)
            alpha = float(f.get_tensor(f"{m}.alpha"))
        down, up = down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1)
        return up @ down * alpha / down.shape[0]

    with safe_open(str(avg), "np") as f:
        modules = sorted({k.rsplit(".", 2)[0] for k in f.keys() if k.endswith("lora_down.weight")})
    assert len(modules) > 100
    for m in modules:
        mean = (change(pairs[0], m) + change(pairs[1], m)) / 2
        np.testing.assert_allclose(change(avg, m), mean, rtol=0, atol=2e-3 * float(np.abs(mean).max()) + 1e-7)  # saved fp16
