"""Output checks on hand-made safetensors files."""

import pytest
import torch
from safetensors.torch import save_file

from cml.safetensors_file import add_metadata, read_metadata
from cml.validate import ValidationFailed, validate_copy_machine, validate_lora

M = "lora_unet_mid_block_attentions_0_proj_in"


def lora(path, dim=4, alpha=4.0, up=0.1, extra=None, drop=None):
    sd = {
        f"{M}.lora_down.weight": torch.full((dim, 8), 0.1).half(),
        f"{M}.lora_up.weight": torch.full((8, dim), up).half(),
        f"{M}.alpha": torch.tensor(alpha).half(),
    }
    sd.update(extra or {})
    if drop:
        del sd[drop]
    save_file(sd, str(path), {"ss_network_dim": str(dim)})
    return path


def test_good_lora(tmp_path):
    s = validate_lora(lora(tmp_path / "l.safetensors", dim=4, alpha=2.0), 4, 2.0)
    assert s.modules == 1 and s.keys == sorted([f"{M}.lora_down.weight", f"{M}.lora_up.weight", f"{M}.alpha"])
    assert (s.rank, s.alpha) == (4, 2.0)  # read from the file


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 8}, "rank 8, expected dim 4"),
        ({"alpha": 1.0}, "alpha 1.0, expected 4.0"),
        ({"up": 0.0}, "all lora_up weights are zero"),
        ({"up": float("nan")}, "NaN or Inf"),
        ({"up": float("inf")}, "NaN or Inf"),
        ({"drop": f"{M}.alpha"}, "incomplete"),
        (
            {
                "extra": {
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8).half(),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4).half(),
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(4.0).half(),
                }
            },
            "text encoder module",
        ),
        ({"extra": {"something_else": torch.zeros(1)}}, "unexpected key"),
    ],
)
def test_bad_loras(tmp_path, kwargs, message):
    with pytest.raises(ValidationFailed, match=message):
        validate_lora(lora(tmp_path / "l.safetensors", **kwargs), 4, 4.0)


def test_resized_lora_may_hold_resize_loras_rank_1_stand_in_for_an_all_zero_module(tmp_path):
    """networks/resize_lora.py writes a module that learned nothing at rank 1, alpha = alpha/dim (sd-scripts' MIN_SV rule)."""
    zero = "lora_unet_mid_block_attentions_0_proj_out"
    stand_in = {
        f"{zero}.lora_down.weight": torch.zeros(1, 8).half(),
        f"{zero}.lora_up.weight": torch.zeros(8, 1).half(),
        f"{zero}.alpha": torch.tensor(1.0).half(),
    }
    path = lora(tmp_path / "r.safetensors", dim=4, alpha=4.0, extra=stand_in)
    assert validate_lora(path, 4, 4.0, resized=True).modules == 2
    with pytest.raises(ValidationFailed, match="rank 1, expected dim 4"):
        validate_lora(path, 4, 4.0)  # a trained (not resized) LoRA never has it
    learned = dict(stand_in, **{f"{zero}.lora_up.weight": torch.full((8, 1), 0.1).half()})
    with pytest.raises(ValidationFailed, match="rank 1, expected dim 4"):
        validate_lora(lora(tmp_path / "bad.safetensors", dim=4, alpha=4.0, extra=learned), 4, 4.0, resized=True)


def test_missing_and_unreadable_lora(tmp_path):
    with pytest.raises(ValidationFailed, match="no LoRA file"):
        validate_lora(tmp_path / "none.safetensors", 4, 4.0)
    (tmp_path / "bad.safetensors").write_bytes(b"12345678garbage")
    with pytest.raises(ValidationFailed, match="does not load"):
        validate_lora(tmp_path / "bad.safetensors", 4, 4.0)


def base_sd(dtype=torch.float16):
    return {
        "model.diffusion_model.a.weight": torch.ones(4, 4, dtype=dtype),
        "model.diffusion_model.b.weight": torch.ones(4, dtype=dtype),
        "cond_stage_model.transformer.x.weight": torch.full((3,), 0.5, dtype=dtype),
        "first_stage_model.y.weight": torch.full((2, 2), 0.25, dtype=dtype),
    }


def test_merged_checkpoint(tmp_path):
    base = tmp_path / "base.safetensors"
    save_file(base_sd(), str(base))

    made = []

    def merged(change, dtype=torch.float16, drop=None):
        sd = base_sd(dtype)
        change(sd)
        if drop:
            del sd[drop]
        made.append(1)
        p = tmp_path / f"m{len(made)}.safetensors"
        save_file(sd, str(p))
        return p

    ok = merged(lambda sd: sd["model.diffusion_model.a.weight"].add_(0.5))
    assert validate_copy_machine(ok, base) == {"unet_tensors_changed": 1, "keys": 4}
    with pytest.raises(ValidationFailed, match="no U-Net weight differs"):
        validate_copy_machine(merged(lambda sd: None), base)
    with pytest.raises(ValidationFailed, match=r"cond_stage_model.transformer.x.weight \(not U-Net\) differs"):
        validate_copy_machine(merged(lambda sd: (sd["model.diffusion_model.a.weight"].add_(1), sd["cond_stage_model.transformer.x.weight"].add_(1))), base)
    with pytest.raises(ValidationFailed, match="lacks 1 U-Net key"):
        validate_copy_machine(merged(lambda sd: sd["model.diffusion_model.a.weight"].add_(1), drop="model.diffusion_model.b.weight"), base)
    with pytest.raises(ValidationFailed, match="NaN or Inf"):
        validate_copy_machine(merged(lambda sd: sd["model.diffusion_model.a.weight"].fill_(float("nan"))), base)
    # An fp32 base merged and saved as fp16: the round trip of unchanged tensors is not a change.
    base32 = tmp_path / "base32.safetensors"
    save_file(base_sd(torch.float32), str(base32))
    assert validate_copy_machine(ok, base32)["unet_tensors_changed"] == 1
    bf = merged(lambda sd: sd["model.diffusion_model.a.weight"].add_(0.5), dtype=torch.bfloat16)
    assert validate_copy_machine(bf, base)["unet_tensors_changed"] == 1


def test_add_metadata_keeps_tensors_and_sd_scripts_keys(tmp_path):
    src = lora(tmp_path / "l.safetensors")
    add_metadata(src, tmp_path / "out.safetensors", {"cml_stage": "diff-x"})
    meta = read_metadata(tmp_path / "out.safetensors")
    assert meta == {"ss_network_dim": "4", "cml_stage": "diff-x"}
    validate_lora(tmp_path / "out.safetensors", 4, 4.0)
