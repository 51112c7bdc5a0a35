"""Checkpoints and copy machine models through the CLI."""

import json

from tests.unit.test_model_files import vpred_sdxl


def test_copy_machine_model_keeps_the_markers(fake_sd, write_preset, tmp_path):
    from safetensors import safe_open

    from tests.conftest import run_cml

    base = vpred_sdxl(tmp_path, "v_pred")
    r = run_cml("run", str(write_preset(base_model=str(base))), "--sd-scripts", fake_sd, "--quiet")
    assert r.returncode == 0, r.stderr
    merged = tmp_path / "runs" / "t" / "merge" / "copy_machine.safetensors"
    with safe_open(str(merged), "numpy") as f, safe_open(str(base), "numpy") as b:
        keys = set(f.keys())
        assert "v_pred" in keys  # ComfyUI and Forge load it as v-prediction, like the base
        unet = "model.diffusion_model.out.2.weight"
        assert (f.get_tensor(unet) == b.get_tensor(unet) + 1).all()  # the merged weights are untouched by the rewrite
    rec = json.loads((tmp_path / "runs" / "t" / "merge" / "record.json").read_text())
    assert rec["markers_kept"] == ["v_pred"]


def test_a_ckpt_base_with_the_checkpoint_merge_is_refused_at_plan_time(write_preset, tmp_path):
    from tests.conftest import run_cml

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    p = write_preset(base_model=str(ckpt), allow_pickle=True, family="sd1")
    r = run_cml("plan", str(p))
    assert r.returncode == 2 and "cml reads from .safetensors files only" in r.stderr and 'merge = "in_memory"' in r.stderr
    assert not (tmp_path / "runs").exists()
    ok = write_preset(base_model=str(ckpt), allow_pickle=True, family="sd1", merge="in_memory", filename="mem.toml")
    assert run_cml("plan", str(ok)).returncode == 0
