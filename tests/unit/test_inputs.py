"""A run is what it says it trained on, cml's folders are really cml's, and no error is an "internal error".

Each test takes a class of defect with more than one instance (issue 19); the fake sd-scripts stands in for the
trainer, as in test_pipeline.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cml.errors import ConfigErrors, InputError
from cml.preset import load_preset
from tests.conftest import make_checkpoint


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "run\n"}, "is not a safe folder name"),
        ({"targets": {"gray\n": {"transform": "grayscale"}}}, "is not a safe file name"),
        ({"check": {"prompts": ["a\rb"]}}, "holds a line break"),
        ({"check": {"prompts": ["a\u2028b"]}}, "holds a line break"),
        ({"check": {"prompts": ["a\x1cb"]}}, "holds a line break"),
        ({"check": {"prompts": ["# a photo"]}}, "starts with '#'"),
        ({"check": {"prompts": ["  #a photo"]}}, "starts with '#'"),
        ({"check": {"prompts": ["--d 3"]}}, "contains ' --'"),
        ({"train": {"seed": 2**32}}, "train.seed"),
        ({"copy": {"seed": 2**40}}, "copy.seed"),
        ({"train": {"caption": "line one\nline two"}}, "has a line break"),
        ({"diff": {"caption": "a\rb"}}, "has a line break"),
    ],
)
def test_values_sd_scripts_would_misread_are_refused(write_preset, change, message):
    with pytest.raises(ConfigErrors, match=message):
        load_preset(write_preset(**change))


def test_images_that_are_not_images_are_refused_quickly(write_preset, tmp_path):
    from cml.inputs import load_inputs

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would wait forever
    for bad in (fifo, Path("/dev/zero")):  # /dev/zero: a read that never ends
        preset, _ = load_preset(write_preset(source=str(bad)))
        with pytest.raises(InputError, match="is not a regular file"):
            load_inputs(preset)


@pytest.mark.parametrize("fill", ["nan", "inf", "mixed"])
def test_a_float_tiff_without_finite_pixels_is_refused_and_a_partial_one_named(write_preset, tmp_path, fill):
    from cml.inputs import load_inputs

    a = np.full((96, 96), 0.5, np.float32)
    if fill == "mixed":
        a[:10] = np.nan
    else:
        a[:] = float(fill)
    path = tmp_path / "float.tif"
    Image.fromarray(a, "F").save(path)
    preset, _ = load_preset(write_preset(source=str(path)))
    if fill == "mixed":
        assert any("960 NaN or infinite pixel(s) set to black" in n for n in load_inputs(preset).notes)
    else:
        with pytest.raises(InputError, match="every pixel is NaN or infinite"):
            load_inputs(preset)


def test_a_diffusers_folder_with_pickled_weights_needs_allow_pickle(tmp_path):
    from cml.model_files import inspect_model

    d = tmp_path / "model"
    (d / "unet").mkdir(parents=True)
    (d / "vae").mkdir()
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768}))
    (d / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    (d / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"safe")
    with pytest.raises(InputError, match="unet weights are pickled .bin files"):
        inspect_model(d)
    assert inspect_model(d, allow_pickle=True).kind == "diffusers"
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"safe")  # diffusers loads this one instead
    assert inspect_model(d).kind == "diffusers"


def test_the_hash_cache_forgets_files_that_are_gone(tmp_path):
    from cml.model_files import file_sha256
    from cml.paths import cache_root

    files = []
    for i in range(3):
        f = make_checkpoint(tmp_path / f"m{i}.safetensors")
        file_sha256(f)
        files.append(f)
    for f in files[:2]:
        f.unlink()
    other = make_checkpoint(tmp_path / "other.safetensors")
    file_sha256(other)
    known = json.loads((cache_root() / "sha256.json").read_text())["files"]
    assert str(files[2].resolve()) in known and str(other.resolve()) in known
    assert not any(str(f.resolve()) in known for f in files[:2])
