"""A two-way slider is (L_ab - L_ba) / 2 at twice the rank, made by sd-scripts' own LoRA merge with the ratios and
--concat that cml passes (cml/render/scripts.py): checked numerically on small hand-made LoRAs."""

import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def merge_lora(sd_scripts):
    for p in (sd_scripts.path, sd_scripts.path / "networks"):  # merge_lora.py imports lora as the script it is
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    from networks import merge_lora

    return merge_lora


def lora(path, rng, dim=4, alpha=4.0, modules=("lora_unet_a_to_q", "lora_unet_b_proj_in")):
    import torch
    from safetensors.torch import save_file

    sd = {}
    for m in modules:
        sd[f"{m}.lora_down.weight"] = torch.from_numpy(rng.normal(size=(dim, 12)).astype(np.float32))
        sd[f"{m}.lora_up.weight"] = torch.from_numpy(rng.normal(size=(10, dim)).astype(np.float32))
        sd[f"{m}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))
    return {k: v.numpy() for k, v in sd.items()}


def delta(sd, m):
    down, up = sd[f"{m}.lora_down.weight"], sd[f"{m}.lora_up.weight"]
    return up @ down * float(sd[f"{m}.alpha"]) / down.shape[0]


@pytest.mark.parametrize("alpha", [4.0, 1.0])
def test_ratios_1_and_minus_1_with_concat_give_half_the_difference_at_twice_the_rank(merge_lora, tmp_path, alpha):
    import torch

    rng = np.random.default_rng(0)
    ab, ba = lora(tmp_path / "ab.safetensors", rng, alpha=alpha), lora(tmp_path / "ba.safetensors", rng, alpha=alpha)
    merged, _, _ = merge_lora.merge_lora_models([str(tmp_path / "ab.safetensors"), str(tmp_path / "ba.safetensors")], [1.0, -1.0], torch.float, concat=True)
    got = {k: v.numpy() for k, v in merged.items()}
    for m in ("lora_unet_a_to_q", "lora_unet_b_proj_in"):
        assert got[f"{m}.lora_down.weight"].shape[0] == 8 and float(got[f"{m}.alpha"]) == alpha  # twice the rank, alpha kept
        np.testing.assert_allclose(delta(got, m), (delta(ab, m) - delta(ba, m)) / 2, rtol=1e-5, atol=1e-5)


def test_ratios_of_1_with_concat_give_the_mean_of_n_loras_at_n_times_the_rank(merge_lora, tmp_path):
    """each_pair's average (cml/render/scripts.py): n LoRAs at ratio 1, ranks stacked under the first one's alpha."""
    import torch

    rng = np.random.default_rng(2)
    paths = [tmp_path / f"p{i}.safetensors" for i in range(3)]
    loras = [lora(p, rng) for p in paths]
    merged, _, _ = merge_lora.merge_lora_models([str(p) for p in paths], [1.0] * 3, torch.float, concat=True)
    got = {k: v.numpy() for k, v in merged.items()}
    for m in ("lora_unet_a_to_q", "lora_unet_b_proj_in"):
        assert got[f"{m}.lora_down.weight"].shape[0] == 12
        np.testing.assert_allclose(delta(got, m), sum(delta(x, m) for x in loras) / 3, rtol=1e-5, atol=1e-5)


def test_a_ratio_acts_as_its_square_with_its_sign(merge_lora, tmp_path):
    """Why cml passes 1 and -1: 0.5 would weigh a LoRA by 0.25, not 0.5 (sd-scripts scales down by r, up by |r|)."""
    import torch

    rng = np.random.default_rng(1)
    one = lora(tmp_path / "one.safetensors", rng)
    merged, _, _ = merge_lora.merge_lora_models([str(tmp_path / "one.safetensors")], [-0.5], torch.float, concat=False)
    got = {k: v.numpy() for k, v in merged.items()}
    np.testing.assert_allclose(delta(got, "lora_unet_a_to_q"), -0.25 * delta(one, "lora_unet_a_to_q"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [4.0, 1.0])
def test_flux_merge_lora_gives_the_same_slider(sd_scripts, tmp_path, alpha):
    """FLUX.1's two-way slider: networks/flux_merge_lora.py, with the same ratios and --concat (cml/families.py)."""
    import torch

    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    from networks import flux_merge_lora

    rng = np.random.default_rng(2)
    modules = ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1")
    ab = lora(tmp_path / "ab.safetensors", rng, alpha=alpha, modules=modules)
    ba = lora(tmp_path / "ba.safetensors", rng, alpha=alpha, modules=modules)
    merged, _ = flux_merge_lora.merge_lora_models([str(tmp_path / "ab.safetensors"), str(tmp_path / "ba.safetensors")], [1.0, -1.0], torch.float, concat=True)
    got = {k: v.numpy() for k, v in merged.items()}
    for m in modules:
        assert got[f"{m}.lora_down.weight"].shape[0] == 8 and float(got[f"{m}.alpha"]) == alpha
        np.testing.assert_allclose(delta(got, m), (delta(ab, m) - delta(ba, m)) / 2, rtol=1e-5, atol=1e-5)
