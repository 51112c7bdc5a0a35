"""cml/model_files.py and cml/validate.py on checkpoints, in-process."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cml.errors import InputError
from cml.model_files import inspect_model, resolve_family
from tests.conftest import make_checkpoint


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_family_is_detected_from_keys(tmp_path, family):
    info = inspect_model(make_checkpoint(tmp_path / "m.safetensors", family))
    assert info.family == family and info.kind == "checkpoint" and info.dtype == "F16"
    assert resolve_family(info, "auto") == family


def test_v_prediction_from_modelspec_metadata(tmp_path):
    info = inspect_model(make_checkpoint(tmp_path / "m.safetensors", "sd2", {"modelspec.prediction_type": "v"}))
    assert info.v_parameterization is True


def test_declared_family_mismatch_names_both(tmp_path):
    info = inspect_model(make_checkpoint(tmp_path / "m.safetensors", "sd1"))
    with pytest.raises(InputError, match="declared SDXL but the file is SD1.x"):
        resolve_family(info, "sdxl")


def test_lora_instead_of_checkpoint(tmp_path):
    p = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(InputError, match="this is a LoRA, not a checkpoint"):
        inspect_model(p)


def test_truncated_and_foreign_files(tmp_path):
    good = make_checkpoint(tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        inspect_model(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a readable safetensors file"):
        inspect_model(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(InputError, match="not a base model of a family cml knows"):
        inspect_model(other)
    txt = tmp_path / "model.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match="unsupported model file type"):
        inspect_model(txt)
    with pytest.raises(InputError, match="model not found"):
        inspect_model(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        inspect_model(empty)


def test_ckpt_is_never_unpickled_without_opt_in(tmp_path):
    p = tmp_path / "m.ckpt"
    # A pickle that would run code if loaded: cml must refuse before touching it.
    p.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(InputError, match="can run code"):
        inspect_model(p)
    assert not (tmp_path / "pwned").exists()
    info = inspect_model(p, allow_pickle=True)  # opt-in: sd-scripts will load it; cml still does not
    assert info.family is None and not (tmp_path / "pwned").exists()
    with pytest.raises(InputError, match="set family"):
        resolve_family(info, "auto")
    assert resolve_family(info, "sd1") == "sd1"


def test_diffusers_folder(tmp_path):

    d = tmp_path / "model"
    (d / "unet").mkdir(parents=True)
    (d / "scheduler").mkdir()
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 1024}))
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    info = inspect_model(d)
    assert (info.kind, info.family, info.v_parameterization) == ("diffusers", "sd2", True)
    with pytest.raises(InputError, match="not a diffusers model"):
        inspect_model(tmp_path)


def vpred_sdxl(tmp_path, *markers: str) -> Path:
    """A tiny SDXL checkpoint marked the way NoobAI-XL v-pred is: empty marker tensors in the state dict."""
    from safetensors import safe_open

    p = make_checkpoint(tmp_path / "noob.safetensors", "sdxl")
    with safe_open(str(p), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    for m in markers:
        sd[m] = torch.tensor([])
    save_file(sd, str(p))
    return p


def test_v_prediction_from_the_v_pred_key(tmp_path):
    info = inspect_model(vpred_sdxl(tmp_path, "v_pred", "ztsnr"))
    assert info.family == "sdxl" and info.v_parameterization is True and info.markers == ("v_pred", "ztsnr")


def test_v_pred_sdxl_plans_v_parameterization_and_zero_terminal_snr(write_preset, tmp_path):
    from cml.render.gui import gui_json
    from cml.render.train_config import training_toml
    from tests.conftest import plan_for

    plan = plan_for(write_preset(base_model=str(vpred_sdxl(tmp_path, "v_pred", "ztsnr"))))
    t = training_toml(plan, plan.stage("copy"))
    assert t["v_parameterization"] is True and t["zero_terminal_snr"] is True
    g = gui_json(plan, plan.stage("copy"))
    assert g["v_parameterization"] is True and "--zero_terminal_snr" in g["additional_parameters"]


def test_sd2_without_a_prediction_type_is_refused_not_guessed(write_preset, tmp_path):
    from cml.inputs import load_inputs
    from cml.preset import load_preset

    sd2 = make_checkpoint(tmp_path / "sd2.safetensors", "sd2")
    preset, _ = load_preset(write_preset(base_model=str(sd2)))
    with pytest.raises(InputError, match="v_parameterization = true for 768-v models"):
        load_inputs(preset)
    preset, _ = load_preset(write_preset(base_model=str(sd2), v_parameterization=False))
    assert load_inputs(preset).v_parameterization is False
