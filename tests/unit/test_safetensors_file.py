import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from cml.safetensors_file import layout, write_reshaped


def sd2_like_lora(path):
    rng = np.random.default_rng(0)
    sd = {
        "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": rng.normal(size=(4, 12, 1, 1)).astype(np.float16),
        "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": rng.normal(size=(12, 4, 1, 1)).astype(np.float16),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": np.array(4.0, dtype=np.float16),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": rng.normal(size=(4, 12)).astype(np.float32),
    }
    save_file(sd, str(path), metadata={"ss_v2": "True", "cml_target": "grayscale"})
    return sd


def test_a_reshaped_copy_holds_the_same_numbers_and_metadata(tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sd = sd2_like_lora(src)
    changed = write_reshaped(src, dst, lambda name, shape: shape[:2] if len(shape) == 4 else None)
    assert sorted(changed) == sorted(k for k, v in sd.items() if v.ndim == 4)
    with safe_open(str(dst), "np") as f:
        assert f.metadata() == {"ss_v2": "True", "cml_target": "grayscale"}
        assert set(f.keys()) == set(sd)
        for k, v in sd.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == (v.shape[:2] if v.ndim == 4 else v.shape)
            np.testing.assert_array_equal(got.reshape(v.shape), v)
    (_, a), (_, b) = layout(src), layout(dst)
    assert src.read_bytes()[a:] == dst.read_bytes()[b:]  # the header changed, not one byte of the data


def test_a_reshape_that_changes_the_element_count_writes_nothing(tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sd2_like_lora(src)
    with pytest.raises(ValueError, match="cannot reshape"):
        write_reshaped(src, dst, lambda name, shape: [1] if len(shape) == 4 else None)
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]
