"""SDXL end to end on a random SDXL-architecture checkpoint at 64 px. Needs ~23 GB of RAM: run alone (make test-slow).

device = "cpu" keeps torch out of cml's own process (no CUDA probe): on a 24 GiB machine every GiB counts.
"""

import json

import pytest
import tomli_w

from cml.outputs import read_metadata, validate_lora
from tests.conftest import run_cml

pytestmark = pytest.mark.slow


def test_sdxl_three_stages_and_a_direct_target(sd_scripts, demo_assets, tmp_path):
    """The copy machine method's three stages and the direct method on SDXL's own scripts (sdxl_train_network.py through
    cml's trainer, sdxl_merge_lora.py): valid U-Net-only LoRAs of the configured rank."""
    from cml.demo import random_sdxl_checkpoint

    model = random_sdxl_checkpoint(sd_scripts.path)
    p = tmp_path / "sdxl.toml"
    p.write_text(
        tomli_w.dumps(
            {
                "name": "sdxl",
                "base_model": str(model),
                "source": str(demo_assets["a"]),
                "tokenizer_cache_dir": str(demo_assets["tokenizer"]),
                "output_dir": str(tmp_path / "runs"),
                "device": "cpu",
                "targets": {"grayscale": {"transform": "grayscale"}, "gray_direct": {"transform": "grayscale", "method": "direct"}},
                "train": {"resolution": 64, "steps": 3},
                "direct": {"steps": 4},
            }
        )
    )
    r = run_cml("run", str(p), "--quiet", timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "runs" / "sdxl"
    argv = json.loads((run / "merge" / "record.json").read_text())["argv"]
    assert argv[1] == "networks/sdxl_merge_lora.py" and argv[argv.index("--precision") + 1] == "fp16"
    for stage in ("copy", "direct-gray_direct"):  # SDXL's trainer, through cml's (speedups, the default)
        assert json.loads((run / stage / "record.json").read_text())["argv"][1:4] == ["-m", "cml.kohya.train", "sdxl_train_network"]
    for lora, target, method in (
        (run / "diff-grayscale" / "grayscale.safetensors", "grayscale", "copy_machine"),
        (run / "direct-gray_direct" / "gray_direct.safetensors", "gray_direct", "direct"),
    ):
        s = validate_lora(lora, 16, 16.0)
        assert all(k.startswith("lora_unet_") for k in s.keys)
        meta = read_metadata(lora)
        assert meta["cml_target"] == target and meta["cml_method"] == method
