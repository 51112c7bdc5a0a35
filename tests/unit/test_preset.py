"""The preset models and loading (cml/preset/models.py, load.py), in-process."""

import pytest

from cml.errors import ConfigErrors, InputError
from cml.preset.load import load_preset, parse_set
from cml.preset.models import TrainSettings


def test_defaults_are_the_articles_recipe():
    s = TrainSettings()
    assert (s.dim, s.alpha, s.steps, s.learning_rate) == (16, 16.0, 500, 1e-3)
    assert (s.optimizer, s.scheduler, s.warmup_steps, s.resolution, s.batch_size, s.caption) == ("AdamW8bit", "cosine", 0, 512, 1, "")


def test_overrides_stack_train_then_stage_then_target(write_preset):
    p = write_preset(
        train={"steps": 10, "dim": 8, "resolution": 64},
        copy={"steps": 20},
        diff={"dim": 4},
        targets={"g": {"transform": "grayscale", "train": {"steps": 7}}, "h": {"transform": "invert"}},
    )
    preset, _ = load_preset(p)
    assert (preset.copy_settings().steps, preset.copy_settings().dim) == (20, 8)
    assert (preset.diff_settings("g").steps, preset.diff_settings("g").dim) == (7, 4)
    assert preset.diff_settings("h").steps == 10


def test_relative_paths_resolve_against_the_preset_folder(tmp_path):
    p = tmp_path / "sub" / "p.toml"
    p.parent.mkdir()
    p.write_text('base_model = "m.safetensors"\nsource = "imgs/a.png"\n[targets.g]\ntransform = "grayscale"\n')
    preset, _ = load_preset(p)
    assert preset.base_model == p.parent / "m.safetensors"
    assert preset.source == [p.parent / "imgs" / "a.png"]


def test_all_errors_at_once_with_key_paths_and_did_you_mean(write_preset):
    p = write_preset(trian={"steps": 1}, copy={"dim": 0, "lerning_rate": 1})
    with pytest.raises(ConfigErrors) as e:
        load_preset(p)
    lines = e.value.lines
    assert any("trian: unknown key; did you mean 'train'?" in ln for ln in lines)
    assert any("copy.dim: Input should be greater than 0" in ln for ln in lines)
    assert any("copy.lerning_rate: unknown key; did you mean 'copy.learning_rate'?" in ln for ln in lines)
    assert all(ln.startswith(str(p)) for ln in lines)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"train": {"steps": -5}}, "train.steps"),
        ({"train": {"dim": 0}}, "train.dim"),
        ({"train": {"learning_rate": 0}}, "train.learning_rate"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"targets": {}}, "targets"),
        ({"targets": {"../x": {"transform": "grayscale"}}}, "targets"),
        ({"targets": {"a/b": {"transform": "grayscale"}}}, "targets"),
        ({"targets": {"": {"transform": "grayscale"}}}, "targets"),
        ({"targets": {"G": {"transform": "grayscale"}, "g": {"transform": "invert"}}}, "targets"),
        ({"targets": {"g": {"transform": "posterize"}}}, "targets.g.transform"),
        ({"targets": {"g": {}}}, "targets.g"),
        ({"family": "sd4"}, "family"),
        ({"check": {"weights": []}}, "check.weights"),
        ({"name": "../up"}, "name"),
        ({"merge": "supermerger"}, "merge"),
    ],
)
def test_invalid_values_name_their_key(write_preset, change, key):
    with pytest.raises(ConfigErrors) as e:
        load_preset(write_preset(**change))
    assert any(f": {key}" in ln for ln in e.value.lines), e.value.lines


def test_pair_counts_must_match(write_preset, image_a):
    from cml.inputs import load_inputs

    with pytest.raises(InputError, match="has 2 image.s. but the source has 1: give one B per A"):
        load_inputs(load_preset(write_preset(targets={"e": {"images": [str(image_a), str(image_a)]}}))[0])


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = grayscale\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_preset(bad)
    with pytest.raises(InputError, match="preset not found"):
        load_preset(tmp_path / "nope.toml")


def test_set_values_are_toml_or_strings(write_preset):
    assert parse_set(["train.steps=100", "name=foo", "train.learning_rate=2e-4", "check.weights=[-1.0, 1.0]"]) == [
        (("train", "steps"), 100),
        (("name",), "foo"),
        (("train", "learning_rate"), 2e-4),
        (("check", "weights"), [-1.0, 1.0]),
    ]
    preset, _ = load_preset(write_preset(), ["train.steps=9", "targets.sepia={transform='sepia'}"])
    assert preset.train.steps == 9 and set(preset.targets) == {"grayscale", "sepia"}
    with pytest.raises(InputError, match="not KEY=VALUE"):
        parse_set(["steps"])


def test_preset_hash_changes_with_settings(write_preset):
    _, h1 = load_preset(write_preset())
    _, h2 = load_preset(write_preset(), ["train.steps=4"])
    assert h1 != h2


def test_b_of_another_size_is_refused_unless_resizing_is_allowed(write_preset, tmp_path):
    from cml.inputs import load_inputs
    from tests.conftest import colourful

    b = tmp_path / "b.png"
    colourful((128, 96)).save(b)
    preset, _ = load_preset(write_preset(targets={"e": {"images": [str(b)]}}))
    with pytest.raises(InputError, match="B is 128x96 but its A") as e:
        load_inputs(preset)
    assert "allow_resize = true" in e.value.line()
    preset, _ = load_preset(write_preset(targets={"e": {"images": [str(b)]}}, allow_resize=True))
    inputs = load_inputs(preset)
    assert inputs.targets["e"].images[0].size == inputs.source[0].image.size
    assert any("resized" in n for n in inputs.notes)


def test_diffusers_folder_cannot_be_merged_into_a_checkpoint(write_preset, tmp_path):
    import json

    from cml.inputs import load_inputs

    d = tmp_path / "diffusers"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768}))
    preset, _ = load_preset(write_preset(base_model=str(d)))
    with pytest.raises(InputError, match="merge_lora.py merges into single-file checkpoints only"):
        load_inputs(preset)
    preset, _ = load_preset(write_preset(base_model=str(d), merge="in_memory"))
    assert load_inputs(preset).family == "sd1"


@pytest.mark.parametrize("name", ["AdamW8bit", "adamw8bit", "SGD", "RAdam", "Prodigy", "bitsandbytes.optim.Lion8bit"])
def test_optimizers_sd_scripts_accepts(write_preset, name):
    assert load_preset(write_preset(train={"steps": 3, "resolution": 64, "optimizer": name}))[0].train.optimizer == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("adam", "torch.optim's class is spelled 'Adam'"),  # sd-scripts lowers its own names only: getattr(torch.optim, "adam") fails
        ("LBFGS", "needs a closure"),
        ("AdamW9bit", "did you mean 'AdamW8bit'?"),
    ],
)
def test_optimizers_sd_scripts_would_fail_on_are_refused(write_preset, name, message):
    with pytest.raises(ConfigErrors, match=message):
        load_preset(write_preset(train={"steps": 3, "resolution": 64, "optimizer": name}))


def test_a_utf8_bom_is_fine_and_a_malformed_set_value_is_an_error(write_preset):
    p = write_preset()
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    load_preset(p)
    with pytest.raises(InputError, match=r"--set targets.x: '\{transform=\"sepia\"' is not a TOML value"):
        load_preset(p, ['targets.x={transform="sepia"'])
    preset, _ = load_preset(p, ["name=bare-word"])  # a bare word is a string
    assert preset.name == "bare-word"


def test_the_name_limit_is_stated(write_preset):
    with pytest.raises(ConfigErrors, match="use 1 to 64 letters"):
        load_preset(write_preset(name="x" * 65))
