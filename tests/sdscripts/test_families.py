"""SDXL and SD2 (v-prediction) end to end on random checkpoints of their architectures at 64 px (make test-slow):
the copy machine method's three stages and a direct target on each family's own scripts. Random weights show no
effect; these tests prove the wiring. SDXL needs ~23 GB of RAM: run the slow tier alone.

device = "cpu" keeps torch out of cml's own process (no CUDA probe): on a 24 GiB machine every GiB counts.
"""

import json

import pytest
import tomli_w

from cml.safetensors_file import read_metadata
from cml.validate import validate_lora
from tests.conftest import run_cml

pytestmark = pytest.mark.slow


def run_both_methods(name, model, demo_assets, tmp_path, **preset):
    """A copy machine target and a direct target on ``model``, 3 and 4 steps; the run folder."""
    p = tmp_path / f"{name}.toml"
    base = {
        "version": 2,
        "name": name,
        "base_model": str(model),
        "source": str(demo_assets["a"]),
        "tokenizer_cache_dir": str(demo_assets["tokenizer"]),
        "output_dir": str(tmp_path / "runs"),
        "device": "cpu",
        "targets": {"grayscale": {"transform": "grayscale"}, "gray_direct": {"transform": "grayscale", "method": "direct", "steps": 4}},
        "train": {"resolution": 64, "steps": 3},
    }
    p.write_text(tomli_w.dumps(base | preset))
    r = run_cml("run", str(p), "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp_path / "runs" / name, r


def difference_loras(run):
    """Both targets' LoRAs: valid, U-Net only, of the configured rank, with cml's provenance; their metadata."""
    metas = []
    for lora, target, method in (
        (run / "diff-grayscale" / "grayscale.safetensors", "grayscale", "copy_machine"),
        (run / "direct-gray_direct" / "gray_direct.safetensors", "gray_direct", "direct"),
    ):
        s = validate_lora(lora, 16, 16.0)
        assert all(k.startswith("lora_unet_") for k in s.keys)
        meta = read_metadata(lora)
        assert meta["cml_target"] == target and meta["cml_method"] == method
        metas.append(meta)
    return metas


def argv_of(run, stage):
    return json.loads((run / stage / "record.json").read_text())["argv"]


def test_sdxl_three_stages_and_a_direct_target(sd_scripts, demo_assets, tmp_path):
    """sdxl_train_network.py through cml's trainer, sdxl_merge_lora.py into an fp16 copy machine checkpoint."""
    from cml.demo import random_sdxl_checkpoint

    run, _ = run_both_methods("sdxl", random_sdxl_checkpoint(sd_scripts.path), demo_assets, tmp_path)
    merge = argv_of(run, "merge")
    assert merge[1] == "networks/sdxl_merge_lora.py" and merge[merge.index("--precision") + 1] == "fp16"
    for stage in ("copy", "direct-gray_direct"):  # SDXL's trainer, through cml's (speedups, the default)
        assert argv_of(run, stage)[1:4] == ["-m", "cml.sd_process.train", "sdxl_train_network"]
    difference_loras(run)


def test_sd2_v_prediction_three_stages_and_a_direct_target(sd_scripts, demo_assets, tmp_path):
    """The checkpoint says it is v-prediction only in its metadata (modelspec.prediction_type), as recent tools write
    it: cml must read that and pass --v2 and --v_parameterization to train_network.py (through cml's trainer, the
    direct step included), merge_lora.py and gen_img.py in the check."""
    from cml.demo import random_sd2v_checkpoint

    check = {"enabled": True, "weights": [-1.0, 0.0, 1.0], "seeds": [1], "prompts": [""], "base": False, "sampling_steps": 2}
    run, r = run_both_methods("sd2", random_sd2v_checkpoint(sd_scripts.path), demo_assets, tmp_path, merge="checkpoint", check=check)
    assert "v-prediction checkpoint (marked in the file)" in r.stdout + r.stderr
    merge = argv_of(run, "merge")
    assert merge[1] == "networks/merge_lora.py" and "--v2" in merge
    for stage in ("copy", "diff-grayscale", "direct-gray_direct"):
        train = (run / stage / "train.toml").read_text()
        assert "v2 = true" in train and "v_parameterization = true" in train, stage
        assert argv_of(run, stage)[1:4] == ["-m", "cml.sd_process.train", "train_network"]
    for meta in difference_loras(run):
        assert meta["ss_v2"] == "True" and meta["modelspec.prediction_type"] == "v"  # what sd-scripts itself recorded
    # the check: gen_img.py on the base (copy check) and the copy machine, which loaded the SD2 LoRAs (it refused
    # sd-scripts' [out, in, 1, 1] projection weights before cml handed it [out, in] copies)
    logs = sorted((run / "check" / "gen").glob("*/log.txt"))
    assert len(logs) == 2 and all({"--v2", "--v_parameterization"} <= set(log.read_text().splitlines()[0].rstrip(")").split()) for log in logs)
    assert (run / "check" / "metrics.json").is_file() and (run / "report.md").is_file()
