"""gui.json gives the same run as train.toml: both parsed by the trainer's own parser and compared option by option.

gui.json is turned into options the way the kohya_ss GUI's command builder does (tests/kohya_gui.py, read from
bmaltais/kohya_ss 45088f04); train.toml is what cml runs. No training here.
"""

import importlib
import json
import sys
import tomllib

import pytest
import tomli_w

from cml.render.run_folder import render
from tests.conftest import dit_model, make_checkpoint, plan_for
from tests.kohya_gui import NOT_EXPRESSIBLE, gui_to_options, script

# Dataset options: the dataset TOML's [general] value wins over the option (sd-scripts' config_util), so a
# difference there has no effect as long as the dataset TOML sets it (checked below). option -> dataset key.
DATASET_WINS = {
    "resolution": "resolution",
    "min_bucket_reso": "min_bucket_reso",
    "max_bucket_reso": "max_bucket_reso",
    "bucket_reso_steps": "bucket_reso_steps",
    "enable_bucket": "enable_bucket",
    "caption_extension": "caption_extension",
    "train_batch_size": "batch_size",
    "bucket_no_upscale": "bucket_no_upscale",
    "shuffle_caption": "shuffle_caption",
}

# Options whose values differ between the two namespaces with the same effect, and why.
SAME_EFFECT = {
    "config_file": "two different files",
    "clip_skip": "GUI 1 = sd-scripts' None: the last CLIP layer",
    "max_token_length": "GUI 75 = sd-scripts' None: 75 tokens + 2",
    "epoch": "not an sd-scripts option (the GUI writes it; nothing reads it)",
    "t5xxl_max_token_length": "FLUX.1: gui.json writes the length sd-scripts picks where train.toml has none (512 dev, 256 schnell: flux_train_network.get_tokenize_strategy); asserted below",
    "t5xxl_dtype": "SD3: '[DOES NOT WORK] not supported yet' in sd-scripts (library/sd3_train_utils.py); read nowhere",
    "text_encoder_batch_size": "SD3: the batch of the text-encoder caching pass; each cml stage has one caption",
    "noise_offset_type": "not an sd-scripts option (the GUI writes it; nothing reads it)",
    "network_args": "[] and None: no network arguments",
    "optimizer_args": "[] and None: no optimizer arguments",
    "lr_scheduler_args": "[] and None: no scheduler arguments",
}


def parse(script: str, sd_path, argv: list[str], monkeypatch):
    from library import train_util

    parser = importlib.import_module(script).setup_parser()
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])  # read_config_from_file re-parses sys.argv
    args = parser.parse_args(argv)
    return vars(train_util.read_config_from_file(args, parser))


TRAINERS = {"sd1": "train_network", "sdxl": "sdxl_train_network", "flux": "flux_train_network", "sd3": "sd3_train_network"}


@pytest.mark.parametrize(
    "family, merge, compile_",
    [
        ("sd1", "checkpoint", False),
        ("sd1", "in_memory", False),
        ("sdxl", "checkpoint", False),
        ("sdxl", "in_memory", False),
        ("sd1", "checkpoint", True),
        ("flux", "checkpoint", False),
        ("flux", "in_memory", False),
        ("sd3", "in_memory", False),
        ("sd3", "checkpoint", False),
    ],
)
def test_gui_json_through_the_gui_builder_equals_train_toml(sd_scripts, tmp_path, write_preset, family, merge, compile_, monkeypatch):
    if str(sd_scripts.path) not in sys.path:
        monkeypatch.syspath_prepend(str(sd_scripts.path))
    if family in ("flux", "sd3"):
        model, files = dit_model(tmp_path, family)
        top = {"model_files": files}
    else:
        model, top = make_checkpoint(tmp_path / f"{family}.safetensors", family), {}
    plan = plan_for(
        write_preset(
            base_model=str(model),
            merge=merge,
            train={"resolution": 64, "steps": 40, "warmup_steps": 3, "precision": "fp16", "torch_compile": compile_},
            **top,
        )
    )
    render(plan, sd_scripts.path)
    checked = 0
    for st in plan.stages:
        if st.kind != "train":
            continue
        gui_file = json.loads((st.dir / "gui.json").read_text())
        trainer = script(gui_file)
        assert trainer == TRAINERS[family]  # the GUI starts the family's own trainer
        cml = parse(trainer, sd_scripts.path, ["--config_file", str(st.dir / "train.toml")], monkeypatch)
        cfg, extra = gui_to_options(gui_file)
        gui_toml = tmp_path / f"gui-{st.name}.toml"
        gui_toml.write_text(tomli_w.dumps(cfg))
        gui = parse(trainer, sd_scripts.path, ["--config_file", str(gui_toml), *extra], monkeypatch)
        diffs = {k: (cml.get(k), gui.get(k)) for k in set(cml) | set(gui) if cml.get(k) != gui.get(k)}
        if not cml.get("torch_compile"):  # sd-scripts reads dynamo_backend only to compile
            diffs.pop("dynamo_backend", None)
        general = tomllib.loads((st.dir / "dataset.toml").read_text())["general"]
        unexplained = {
            k: v for k, v in diffs.items() if k not in SAME_EFFECT and k not in NOT_EXPRESSIBLE and not (k in DATASET_WINS and DATASET_WINS[k] in general)
        }
        assert not unexplained, f"{st.name}: the GUI's run differs from cml's in {unexplained}"
        for k in set(diffs) & set(NOT_EXPRESSIBLE):
            if k == "network_module":  # cml's networks.lora (the same LoRA; the --base_weights fix, exactly faster)
                assert cml[k] == "cml.sd_process.lora" and gui[k] == "networks.lora", (cml[k], gui[k])
            assert k in (st.dir.parent / "README.md").read_text() or k == "base_weights_multiplier"
        # The points the GUI's defaults got wrong before, explicitly:
        assert gui.get("sdpa") is True and not gui.get("xformers")
        assert gui.get("save_every_n_epochs") is None and gui.get("save_every_n_steps") is None
        assert gui["log_with"] == "tensorboard" and gui["logging_dir"] == cml["logging_dir"]
        assert gui["mixed_precision"] == cml["mixed_precision"] == "fp16"
        assert gui["lr_warmup_steps"] == cml["lr_warmup_steps"] == 3
        if family == "sdxl":
            assert gui["no_half_vae"] is cml["no_half_vae"] is True
        if family == "flux":  # the FLUX.1 panel's defaults differ from sd-scripts' and from the recipe
            assert gui["network_module"] == cml["network_module"] == "networks.lora_flux"
            assert (gui["guidance_scale"], gui["timestep_sampling"], gui["model_prediction_type"]) == (1.0, "shift", "raw")
            assert gui["t5xxl_max_token_length"] == 512 and cml["t5xxl_max_token_length"] is None  # dev: sd-scripts picks 512
            assert (gui["ae"], gui["clip_l"], gui["t5xxl"]) == (cml["ae"], cml["clip_l"], cml["t5xxl"])
        if family == "sd3":
            assert gui["network_module"] == cml["network_module"] == "networks.lora_sd3"
            assert (gui["clip_l"], gui["clip_g"], gui["t5xxl"]) == (cml["clip_l"], cml["clip_g"], cml["t5xxl"]) and gui["weighting_scheme"] == "uniform"
        assert gui.get("cache_text_encoder_outputs") == cml.get("cache_text_encoder_outputs")
        if compile_:
            assert gui["torch_compile"] is cml["torch_compile"] is True and gui["dynamo_backend"] == cml["dynamo_backend"] == "inductor"
        if st.base_weights:
            assert gui["base_weights"] == cml["base_weights"] == [p.as_posix() for p in st.base_weights]
        checked += 1
    assert checked == 2  # copy and diff


def test_a_run_folder_with_a_space_is_warned_about(sd_scripts, tmp_path, write_preset):
    from tests.conftest import run_cml

    p = write_preset(merge="in_memory", output_dir=str(tmp_path / "my runs"))
    r = run_cml("plan", str(p), "--sd-scripts", str(sd_scripts.path))
    assert r.returncode == 0, r.stderr
    assert "warning: diff-grayscale/gui.json: the kohya GUI splits and quotes additional parameters" in r.stderr
    readme = (tmp_path / "my runs" / "t" / "README.md").read_text()
    assert "Will not work as written" in readme
    ok = write_preset(merge="in_memory", output_dir=str(tmp_path / "runs"), filename="ok.toml")
    r = run_cml("plan", str(ok), "--sd-scripts", str(sd_scripts.path))
    assert "kohya GUI splits" not in r.stderr
