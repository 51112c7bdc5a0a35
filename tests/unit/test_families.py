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


def test_gui_json_for_flux_and_sd3_and_why_not_for_the_others(write_preset, tmp_path):
    """gui.json where the GUI's FLUX.1 and SD3 modes are modelled (tests/kohya_gui.py); the others' run README says
    why there is none."""
    from cml.render.gui import gui_json, gui_note, has_gui

    for fam in DIT:
        base, files = dit_model(tmp_path / fam if (tmp_path / fam).mkdir() is None else tmp_path, fam)
        merge = "checkpoint" if "checkpoint" in FAMILIES[fam].merges else "in_memory"
        plan = plan_for(write_preset(base_model=str(base), model_files=files, merge=merge))
        assert has_gui(plan) == (fam in ("flux", "sd3")), fam
        if not has_gui(plan):
            assert f"No `gui.json` for {FAMILIES[fam].title}" in gui_note(plan)
            continue
        g = gui_json(plan, plan.stage("copy"))
        box = {"flux": "flux1_checkbox", "sd3": "sd3_checkbox"}[fam]
        assert g[box] is True and not g["sdxl"] and not g["v2"]
        assert g["LoRA_type"] == ("Flux1" if fam == "flux" else "Standard")
        fields = {"flux": ("ae", "clip_l", "t5xxl"), "sd3": ("sd3_clip_l", "clip_g", "sd3_t5xxl")}[fam]
        assert [g[k] for k in fields] == [files[k.removeprefix("sd3_")] for k in fields]


def test_a_flux_schnell_gui_json_keeps_sd_scripts_token_length(write_preset, tmp_path):
    """The GUI's FLUX.1 panel defaults t5xxl_max_token_length to 512; sd-scripts gives schnell 256 when train.toml
    says nothing: gui.json writes what the trainer would use, and train.extra's value where it sets one."""
    from cml.render.gui import gui_additional_parameters, gui_json

    _, files = dit_model(tmp_path, "flux")
    keys = {k: v for k, v in FAMILY_KEYS["flux"].items() if "guidance_in" not in k}
    schnell = small_file(tmp_path / "schnell.safetensors", keys)
    plan = plan_for(write_preset(base_model=str(schnell), model_files=files))
    assert plan.inputs.model.variant == "schnell"
    assert gui_json(plan, plan.stage("copy"))["t5xxl_max_token_length"] == 256
    plan = plan_for(write_preset(base_model=str(schnell), model_files=files, train={"resolution": 64, "steps": 3, "extra": {"t5xxl_max_token_length": 8}}))
    copy = plan.stage("copy")
    assert gui_json(plan, copy)["t5xxl_max_token_length"] == 8
    assert "--t5xxl_max_token_length" not in gui_additional_parameters(plan, copy)  # its own field, not twice


def test_a_dit_file_the_gui_does_not_recognise_and_when_to_load_a_merged_one(write_preset, tmp_path):
    """The GUI ticks SD3 only from model.diffusion_model.x_embedder.proj.weight (a file without it, made up here: real
    SD3 files have it); FLUX.1's box from a merged copy machine model only once the merge stage wrote it."""
    from cml.render.gui import gui_load_order, gui_problems

    _, files = dit_model(tmp_path, "sd3")
    bare = small_file(tmp_path / "bare-sd3.safetensors", {k: v for k, v in FAMILY_KEYS["sd3"].items() if "x_embedder" not in k})
    plan = plan_for(write_preset(base_model=str(bare), model_files=files, merge="in_memory"))
    (problem,) = [p for p in gui_problems(plan) if "does not recognise" in p]
    assert problem.startswith("copy/gui.json, diff-grayscale/gui.json:") and "tick SD3/SD3.5 by hand" in problem
    base, files = dit_model(tmp_path, "flux")
    plan = plan_for(write_preset(base_model=str(base), model_files=files))
    assert not gui_problems(plan)
    (note,) = gui_load_order(plan)
    assert note.startswith("diff-grayscale/gui.json: load it in the kohya GUI only once merge/") and "ticks FLUX.1" in note


def test_comfyuis_key_mapping_finds_a_lora_that_would_not_load(tmp_path):
    """tests/comfyui_keys.py (ComfyUI's lora_unet_ names, used on the real runs' LoRAs) catches a module the model
    lacks and one of another width: the check the slow tests make can fail."""
    from tests.comfyui_keys import not_loaded

    base, _ = dit_model(tmp_path, "flux")
    good = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (2, 4), "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (12, 2)}
    good["lora_unet_double_blocks_0_img_attn_qkv.alpha"] = ()
    assert not not_loaded(small_file(tmp_path / "good.safetensors", good), base)
    bad = {**good, "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (8, 2), "lora_unet_double_blocks_9_x.lora_up.weight": (4, 2)}
    lines = not_loaded(small_file(tmp_path / "bad.safetensors", bad), base)
    assert len(lines) == 2 and any("[8, 2] against [12, 4]" in ln for ln in lines)
    sd3, _ = dit_model(tmp_path / "s" if (tmp_path / "s").mkdir() is None else tmp_path, "sd3")
    ok = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": (2, 4), "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": (12, 2)}
    assert not not_loaded(small_file(tmp_path / "sd3lora.safetensors", ok), sd3)  # model.diffusion_model. keys lose "model."
