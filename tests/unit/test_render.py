import json
import sys
import tomllib
from pathlib import Path

import pytest
import toml  # the reader sd-scripts uses (0.10.2)

from cml.errors import InputError
from cml.inputs import load_inputs
from cml.preset import load_preset
from cml.render.gui import gui_json
from cml.render.run_folder import render
from cml.render.scripts import CML_NETWORK_MODULE, stage_argv
from cml.render.train_config import dataset_toml, refuse_managed_extra, training_toml
from cml.stages import build_plan
from tests.conftest import plan_for

GUI_KEYS = {
    ln.strip()
    for ln in (Path(__file__).parent.parent / "data" / "kohya_ss_lora_preset_keys.txt").read_text().splitlines()
    if ln.strip() and not ln.startswith("#")
}


def test_stages_of_both_merge_modes(write_preset):
    p = plan_for(write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert"}}))
    assert [s.name for s in p.stages] == ["copy", "merge", "diff-g", "diff-i"]
    assert p.stage("diff-g").model == p.stage("merge").output
    m = plan_for(write_preset(merge="in_memory", baseline=True, resize_to=4))
    assert [s.name for s in m.stages] == ["copy", "diff-grayscale", "naive-grayscale", "resize-grayscale"]
    diff, naive = m.stage("diff-grayscale"), m.stage("naive-grayscale")
    assert diff.model == m.preset.base_model and diff.base_weights == [m.stage("copy").output]
    assert naive.model == m.preset.base_model and not naive.base_weights and naive.settings == diff.settings  # the diff stage's recipe


def test_fingerprints_change_only_downstream(write_preset):
    targets = {"g": {"transform": "grayscale"}, "i": {"transform": "invert"}}
    a = plan_for(write_preset(targets=targets))
    b = plan_for(write_preset(targets={"g": {"transform": "grayscale"}, "i": {"transform": "invert", "train": {"steps": 9}}}))
    fp = lambda p: {s.name: s.fingerprint for s in p.stages}  # noqa: E731
    assert {k for k in fp(a) if fp(a)[k] != fp(b)[k]} == {"diff-i"}
    c = plan_for(write_preset(targets=targets, copy={"steps": 5}))
    assert all(fp(a)[k] != fp(c)[k] for k in fp(a))


# TrainSettings' fields when cml 0.1's runs were made: a field added since must be in plan.LATER_SETTINGS, or every
# finished run would look made from other settings after an upgrade (and need --force).
FIELDS_OF_0_1 = {
    "dim", "alpha", "steps", "learning_rate", "optimizer", "scheduler", "warmup_steps", "resolution", "batch_size",
    "caption", "seed", "precision", "gradient_checkpointing", "extra",
}  # fmt: skip


def test_settings_added_later_leave_finished_runs_up_to_date(write_preset):
    from cml.policy import LATER_SETTINGS, settings_id
    from cml.preset.models import TrainSettings

    assert set(TrainSettings.model_fields) == FIELDS_OF_0_1 | set(LATER_SETTINGS)
    assert set(settings_id(TrainSettings())) == FIELDS_OF_0_1  # at their defaults, later settings are not in it
    fp = lambda p: {s.name: s.fingerprint for s in p.stages}  # noqa: E731
    a, b = plan_for(write_preset()), plan_for(write_preset(train={"torch_compile": True}))
    assert all(fp(a)[k] != fp(b)[k] for k in ("copy", "diff-grayscale"))  # set, they are: another way of training


def test_cpu_falls_back_from_8bit_optimizers_and_says_so(write_preset):
    p = plan_for(write_preset())
    copy = p.stage("copy")
    assert copy.settings.optimizer == "AdamW"
    assert any("AdamW8bit cannot run here (bitsandbytes needs a CUDA GPU" in n for n in copy.notes)


def test_dataset_toml(write_preset):
    p = plan_for(write_preset())
    d = dataset_toml(p.stage("copy"))
    assert d["general"]["resolution"] == 64 and d["general"]["batch_size"] == 1
    assert d["datasets"][0]["subsets"] == [{"image_dir": str(p.stage("copy").images_dir), "num_repeats": 1}]


def test_training_toml_has_the_articles_settings_with_correct_types(write_preset):
    p = plan_for(write_preset(train={}))
    t = training_toml(p, p.stage("copy"))
    assert t["network_dim"] == 16 and isinstance(t["network_dim"], int)
    assert t["network_alpha"] == 16.0 and isinstance(t["network_alpha"], float)
    assert t["learning_rate"] == 1e-3 and isinstance(t["learning_rate"], float)
    assert (t["max_train_steps"], t["lr_scheduler"], t["lr_warmup_steps"]) == (500, "cosine", 0)
    assert t["network_train_unet_only"] is True and t["network_module"] == "cml.sd_process.lora"  # networks.lora, exactly faster (cml/sd_process/lora.py)
    assert t["mixed_precision"] == "no"  # CPU
    assert t["pretrained_model_name_or_path"] == str(p.preset.base_model)


def test_extra_options_pass_through_but_not_managed_ones(write_preset):
    p = plan_for(write_preset(train={"resolution": 64, "extra": {"noise_offset": 0.05, "max_grad_norm": 0.5}}))
    t = training_toml(p, p.stage("copy"))
    assert t["noise_offset"] == 0.05 and t["max_grad_norm"] == 0.5
    p = plan_for(write_preset(train={"resolution": 64, "extra": {"gradient_checkpointing": True}}))
    with pytest.raises(InputError, match="gradient_checkpointing, which cml manages"):  # the preset has its own key
        refuse_managed_extra(p)
    p = plan_for(write_preset(train={"resolution": 64, "extra": {"output_dir": "/elsewhere"}}))
    with pytest.raises(InputError, match="output_dir, which cml manages") as e:
        refuse_managed_extra(p)
    assert "copy: train.extra sets output_dir" in str(e.value) and "diff-grayscale: train.extra sets output_dir" in str(e.value)  # all stages at once


def test_torch_compile_is_sd_scripts_own_option_with_its_cache_in_cmls(write_preset, tmp_path, monkeypatch):
    from cml.sdscripts import SdScripts, python_env

    p = plan_for(write_preset(train={"resolution": 64, "torch_compile": True}))
    for st in ("copy", "diff-grayscale"):
        assert training_toml(p, p.stage(st))["torch_compile"] is True
        assert "dynamo_backend" not in training_toml(p, p.stage(st))  # sd-scripts' default: inductor
        assert gui_json(p, p.stage(st))["additional_parameters"].split() == ["--torch_compile"]
    assert "torch_compile" not in training_toml(plan_for(write_preset()), plan_for(write_preset()).stage("copy"))
    with pytest.raises(InputError, match="torch_compile, which cml manages"):  # the preset's key, not train.extra
        refuse_managed_extra(plan_for(write_preset(train={"extra": {"torch_compile": True}})))
    monkeypatch.setenv("CML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    env = python_env(SdScripts(tmp_path, None, "test"))
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/mine")  # the user's own setting wins
    assert python_env(SdScripts(tmp_path, None, "test"))["TORCHINDUCTOR_CACHE_DIR"] == "/mine"


def test_in_memory_diff_uses_base_weights_and_the_fixed_module(write_preset):
    p = plan_for(write_preset(merge="in_memory"))
    t = training_toml(p, p.stage("diff-grayscale"))
    assert t["base_weights"] == [str(p.stage("copy").output)] and t["base_weights_multiplier"] == [1.0]
    assert t["network_module"] == CML_NETWORK_MODULE
    assert training_toml(p, p.stage("copy"))["network_module"] == CML_NETWORK_MODULE  # the exact speed-ups, on by default
    plain = plan_for(write_preset(merge="in_memory", speedups=False))  # sd-scripts' own, but where the fix is needed
    assert training_toml(plain, plain.stage("copy"))["network_module"] == "networks.lora"
    assert training_toml(plain, plain.stage("diff-grayscale"))["network_module"] == CML_NETWORK_MODULE
    g = gui_json(p, p.stage("diff-grayscale"))
    assert g["additional_parameters"] == f"--base_weights {p.stage('copy').output}"


def test_exact_argv(write_preset):
    p = plan_for(write_preset(resize_to=4))
    copy, merge = p.stage("copy"), p.stage("merge")
    assert stage_argv(p, copy) == [sys.executable, "-m", "cml.sd_process.train", "train_network", "--config_file", str(copy.dir / "train.toml")]
    plain = plan_for(write_preset(speedups=False))
    assert stage_argv(plain, plain.stage("copy")) == [sys.executable, "train_network.py", "--config_file", str(plain.stage("copy").dir / "train.toml")]
    assert stage_argv(p, merge) == [
        sys.executable,
        "networks/merge_lora.py",
        "--sd_model",
        str(p.preset.base_model),
        "--models",
        str(copy.output),
        "--ratios",
        "1.0",
        "--save_to",
        str(merge.work_dir / "copy_machine.safetensors"),
        "--precision",
        "float",
        "--save_precision",
        "fp16",
    ]
    rs = p.stage("resize-grayscale")
    assert stage_argv(p, rs) == [
        sys.executable,
        "networks/resize_lora.py",
        "--model",
        str(p.stage("diff-grayscale").output),
        "--new_rank",
        "4",
        "--save_to",
        str(rs.work_dir / "grayscale_r4.safetensors"),
        "--save_precision",
        "fp16",
        "--device",
        "cpu",
    ]


def test_sdxl_and_sd2_scripts(tmp_path, write_preset):
    from tests.conftest import make_checkpoint, plan_for

    x = plan_for(write_preset(base_model=str(make_checkpoint(tmp_path / "xl.safetensors", "sdxl"))))
    assert stage_argv(x, x.stage("copy"))[1:4] == ["-m", "cml.sd_process.train", "sdxl_train_network"]
    assert stage_argv(x, x.stage("merge"))[1:6] == [
        "networks/sdxl_merge_lora.py",
        "--sd_model",
        str(tmp_path / "xl.safetensors"),
        "--models",
        str(x.stage("copy").output),
    ]
    assert "--precision" in stage_argv(x, x.stage("merge")) and stage_argv(x, x.stage("merge"))[-3] == "fp16"  # float does not fit 24 GiB
    assert training_toml(x, x.stage("copy"))["cache_text_encoder_outputs"] is True
    v = plan_for(write_preset(base_model=str(make_checkpoint(tmp_path / "v.safetensors", "sd2", {"modelspec.prediction_type": "v"}))))
    t = training_toml(v, v.stage("copy"))
    assert t["v2"] is True and t["v_parameterization"] is True
    assert "--v2" in stage_argv(v, v.stage("merge"))


def test_gui_json_uses_only_the_guis_own_keys(write_preset):
    for merge in ("checkpoint", "in_memory"):
        p = plan_for(write_preset(merge=merge))
        for st in p.stages:
            if st.kind == "train":
                g = gui_json(p, st)
                assert set(g) <= GUI_KEYS, set(g) - GUI_KEYS
                assert g["text_encoder_lr"] == 0 and g["unet_lr"] > 0  # U-Net only, the GUI's way
                assert g["dataset_config"] == str(st.dir / "dataset.toml")


def test_render_writes_every_file_and_toml_reads_back(write_preset):
    p = plan_for(write_preset())
    files = render(p, Path("/opt/sd-scripts"))
    for st in p.stages:
        if st.kind == "train":
            for name in ("dataset.toml", "train.toml", "gui.json"):
                assert (st.dir / name) in files
            assert (st.images_dir / "000.png").exists()
            assert not (st.images_dir / "000.txt").exists()  # empty caption: no file (sd-scripts rejects empty ones)
            assert toml.load(st.dir / "train.toml") == training_toml(p, st)
            json.loads((st.dir / "gui.json").read_text())
        else:
            assert json.loads((st.dir / "command.json").read_text())["argv"] == stage_argv(p, st)
    sh = (p.run_dir / "commands.sh").read_text()
    assert "cd /opt/sd-scripts" in sh and "python -m cml.sd_process.train train_network --config_file" in sh
    assert tomllib.loads((p.run_dir / "preset.toml").read_text())["name"] == "t"


@pytest.mark.parametrize("name", ["with space", "quote'and\"double", "back\\slash", "ünïcødé-日本", "C:\\Users\\me\\new"])
def test_paths_survive_sd_scripts_toml_reader(tmp_path, write_preset, name, ckpt):
    folder = tmp_path / name
    folder.mkdir()
    model = folder / "model.safetensors"
    model.write_bytes(ckpt.read_bytes())
    p = plan_for(write_preset(base_model=str(model), output_dir=str(folder / "runs")))
    render(p, Path("/opt/sd-scripts"))
    copy = p.stage("copy")
    t = toml.load(copy.dir / "train.toml")
    assert t["pretrained_model_name_or_path"] == str(model)
    assert t["output_dir"] == str(copy.work_dir)
    assert toml.load(copy.dir / "dataset.toml")["datasets"][0]["subsets"][0]["image_dir"] == str(copy.images_dir)


def test_every_option_cml_ever_writes_is_refused_in_train_extra(write_preset, tmp_path):
    """The managed set is derived from the rendered options; this renders every kind of plan to see that it holds."""
    from cml.device import Gpu
    from cml.render.train_config import CONDITIONAL, managed_keys, managed_options
    from tests.conftest import make_checkpoint, plan_for

    seen: set[str] = set()
    for family in ("sd1", "sd2", "sdxl"):
        model = make_checkpoint(tmp_path / f"{family}.safetensors", family, {"modelspec.prediction_type": "v"} if family != "sd1" else None)
        for merge in ("checkpoint", "in_memory"):
            train = {"torch_compile": merge == "in_memory"}
            preset, digest = load_preset(write_preset(base_model=str(model), merge=merge, baseline=True, train=train))
            inputs = load_inputs(preset)
            inputs.device, inputs.gpu = "cuda", Gpu("GPU", 8 * 2**30, (7, 5), None)
            plan = build_plan(preset, digest, inputs, None)
            for st in plan.stages:
                if st.settings is not None:
                    keys = set(managed_options(plan, st))
                    assert keys <= managed_keys(plan, st)
                    seen |= keys
    from cml.families import DIT
    from tests.conftest import dit_model

    for family in DIT:  # the DiT families: their model files
        base, files = dit_model(tmp_path, family)
        plan = plan_for(write_preset(base_model=str(base), model_files=files, merge="in_memory"))
        seen |= set(managed_options(plan, plan.stage("copy")))
    always = set(managed_options(plan_for(write_preset()), plan_for(write_preset()).stage("copy")))
    assert seen - always == set(CONDITIONAL) - {"zero_terminal_snr"}  # ztsnr: only with a marked base (test_checkpoint.py)
