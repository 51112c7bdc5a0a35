"""The family table (cml/families.py): each family detected from its file's keys, planned with its trainer, its
other model files, its recipe and merge route, and every bad input of a family refused before anything is written,
all at once (cml/inputs.py). Header-only files: nothing here trains."""

import pytest

from cml.errors import ConfigErrors, InputError
from cml.families import DIT, FAMILIES, detect
from cml.render.scripts import stage_argv
from cml.render.train_config import training_toml
from tests.conftest import FAMILY_KEYS, PART_KEYS, dit_model, make_checkpoint, plan_for, small_file


@pytest.mark.parametrize("family", sorted(FAMILY_KEYS))
def test_each_dit_family_is_detected_from_its_keys(family):
    assert detect(set(FAMILY_KEYS[family])) == family


def test_the_sd_families_are_detected_from_their_keys(tmp_path):
    from cml.model_files import inspect_model

    for fam in ("sd1", "sd2", "sdxl"):
        assert inspect_model(make_checkpoint(tmp_path / f"{fam}.safetensors", fam)).family == fam


def test_a_flux_file_with_comfyuis_prefix_is_still_flux():
    assert detect({"model.diffusion_model." + k for k in FAMILY_KEYS["flux"]}) == "flux"


def test_text_encoders_and_autoencoders_are_no_family():
    for keys in PART_KEYS.values():
        assert detect(set(keys)) is None


@pytest.mark.parametrize("family", DIT)
def test_each_dit_family_plans_its_trainer_files_and_recipe(family, write_preset, tmp_path):
    f = FAMILIES[family]
    base, files = dit_model(tmp_path, family)
    merge = "checkpoint" if "checkpoint" in f.merges else "in_memory"
    plan = plan_for(write_preset(base_model=str(base), model_files=files, merge=merge))
    assert plan.inputs.family == family
    copy = plan.stage("copy")
    argv = stage_argv(plan, copy)
    assert argv[1:4] == ["-m", "cml.sd_process.train", f.trainer]
    toml = training_toml(plan, copy)
    assert toml["network_module"] == f.network_module and toml["network_train_unet_only"] is True
    assert {k: toml[k] for k in files} == files  # each model file as the trainer's option of its name
    assert all(toml[k] == v for k, v in f.recipe.items())  # sd-scripts' documented settings for the family
    assert toml["cache_text_encoder_outputs"] is True and toml["gradient_checkpointing"] is True
    if merge == "checkpoint":
        merge_argv = stage_argv(plan, plan.stage("merge"))
        assert (merge_argv[1] == f.merge_script) if f.merge_script else (merge_argv[1:4] == ["-m", "cml.sd_process.merge", family])
    else:
        assert plan.stage("diff-grayscale").base_weights == [copy.output]
    assert not (plan.run_dir / "copy" / "gui.json").exists()


def test_the_flux_merge_writes_the_dit_in_the_bases_precision(write_preset, tmp_path):
    base, files = dit_model(tmp_path, "flux")
    plan = plan_for(write_preset(base_model=str(base), model_files=files))
    argv = stage_argv(plan, plan.stage("merge"))
    assert argv[1] == "networks/flux_merge_lora.py" and argv[argv.index("--flux_model") + 1] == str(base)
    assert argv[argv.index("--save_precision") + 1] == "fp16"  # the small file's tensors are float16


def test_a_recipe_flag_can_be_changed_through_train_extra(write_preset, tmp_path):
    base, files = dit_model(tmp_path, "flux")
    plan = plan_for(write_preset(base_model=str(base), model_files=files, train={"steps": 3, "resolution": 64, "extra": {"timestep_sampling": "sigmoid"}}))
    assert training_toml(plan, plan.stage("copy"))["timestep_sampling"] == "sigmoid"


def refused(write_preset, **top) -> list[str]:
    with pytest.raises(InputError) as e:
        plan_for(write_preset(**top))
    return e.value.lines if isinstance(e.value, ConfigErrors) else [e.value.line()]


def test_bad_model_files_are_named_all_at_once(write_preset, tmp_path):
    base, files = dit_model(tmp_path, "flux")
    lora = small_file(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": (4, 4), "lora_unet_x.lora_up.weight": (4, 4)})
    sd3, _ = dit_model(tmp_path / "sd3" if (tmp_path / "sd3").mkdir() is None else tmp_path, "sd3")
    bad = {"clip_l": files["clip_g"] if "clip_g" in files else str(small_file(tmp_path / "g.safetensors", PART_KEYS["clip_g"])), "t5xxl": str(lora)}
    bad |= {"ae": str(sd3), "clip_g": str(tmp_path / "g.safetensors")}
    lines = refused(write_preset, base_model=str(base), model_files=bad)
    assert any("model_files.clip_g: FLUX.1 takes no clip_g" in ln for ln in lines)
    assert any("model_files.t5xxl" in ln and "this is a LoRA, not the T5-XXL text encoder" in ln for ln in lines)
    assert any("model_files.ae" in ln and "SD3/SD3.5 base model, not the autoencoder" in ln for ln in lines)
    assert any("model_files.clip_l" in ln and "1280 wide, not the CLIP-L text encoder (768)" in ln for ln in lines)


def test_a_missing_text_encoder_is_named(write_preset, tmp_path):
    base, files = dit_model(tmp_path, "flux")
    del files["t5xxl"]
    (line,) = refused(write_preset, base_model=str(base), model_files=files)
    assert line.startswith("model_files.t5xxl: FLUX.1 needs its t5xxl file")


def test_a_flux_file_with_prefixed_keys_is_not_merged_into_a_checkpoint(write_preset, tmp_path):
    """flux_merge_lora.py matches no LoRA key to model.diffusion_model.-prefixed keys: the merge would equal the base."""
    _, files = dit_model(tmp_path, "flux")
    base = small_file(tmp_path / "comfy-flux.safetensors", {"model.diffusion_model." + k: s for k, s in FAMILY_KEYS["flux"].items()})
    (line,) = refused(write_preset, base_model=str(base), model_files=files)
    assert "keys carry the model.diffusion_model. prefix" in line and 'merge = "in_memory"' in line
    assert plan_for(write_preset(base_model=str(base), model_files=files, merge="in_memory")).inputs.model.prefixed


def test_what_a_family_cannot_do_is_refused_at_plan(write_preset, tmp_path):
    base, files = dit_model(tmp_path, "sd3")
    targets = {"d": {"transform": "grayscale", "method": "direct"}, "s": {"transform": "invert", "symmetric": True}}
    lines = refused(write_preset, base_model=str(base), model_files=files, targets=targets, resize_to=4)
    assert any(ln.startswith("targets.d: the direct method wraps the DDPM step") for ln in lines)
    assert any(ln.startswith("targets.s.symmetric: sd-scripts has no LoRA-into-LoRA merge for SD3") for ln in lines)
    assert any(ln.startswith("resize_to:") for ln in lines)
    chroma, cfiles = dit_model(tmp_path, "chroma")
    (line,) = refused(write_preset, base_model=str(chroma), model_files=cfiles)
    assert "no way to write a Chroma copy machine model" in line


def test_model_files_on_an_sd_checkpoint_are_refused(write_preset, tmp_path):
    t5 = small_file(tmp_path / "t5.safetensors", PART_KEYS["t5xxl"])
    (line,) = refused(write_preset, model_files={"t5xxl": str(t5)})
    assert line.startswith("model_files.t5xxl: SD1.x takes no t5xxl")


def test_a_diffusers_folder_of_a_dit_family_is_refused(write_preset, tmp_path):
    d = tmp_path / "FLUX.1-dev"
    d.mkdir()
    (d / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (line,) = refused(write_preset, base_model=str(d), merge="in_memory")
    assert "a Diffusers folder of a FluxPipeline" in line and "one .safetensors file" in line
