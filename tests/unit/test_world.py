"""cml/demo/world.py in-process: the scenes and the world's cache key (the build itself: tests/sdscripts/test_world.py)."""

import itertools

import pytest

from cml.demo import world
from cml.report.metrics import luminance_ssim


def test_each_scene_is_its_own_picture():
    for a, b in itertools.combinations(world.SCENES, 2):
        assert luminance_ssim(world.scene(a), world.scene(b)) < 0.6, (a, b)
    assert all(world.scene(w).size == (world.SIZE, world.SIZE) for w in world.SCENES)
    assert set(world.WORDS) <= set(world.SCENES)
    with pytest.raises(KeyError):
        world.scene("castle")


def test_the_world_is_rebuilt_when_its_recipe_scenes_or_demo_model_change(monkeypatch):
    key = world.world_key("a" * 64)
    assert world.world_key("a" * 64) == key and world.world_key("b" * 64) != key
    monkeypatch.setattr(world, "RECIPE", {**world.RECIPE, "steps": world.RECIPE["steps"] + 1})
    assert world.world_key("a" * 64) != key
    monkeypatch.undo()
    monkeypatch.setattr(world, "WORDS", world.WORDS[:2])
    assert world.world_key("a" * 64) != key


def test_a_built_world_is_used_as_it_is(monkeypatch, tmp_path):
    """The cached file is returned without running anything (no sd-scripts is given: a run would fail)."""
    from cml import demo

    monkeypatch.setattr(demo, "cache_dir", lambda: tmp_path)
    import cml.model_files  # world_model imports file_sha256 from here when it runs

    monkeypatch.setattr(cml.model_files, "file_sha256", lambda p: "c" * 64)
    built = tmp_path / f"world-{world.world_key('c' * 64)}.safetensors"
    built.write_bytes(b"x")
    assert world.world_model(tmp_path / "no-sd-scripts", tmp_path / "demo.safetensors", tmp_path) == built


def test_a_word_is_recognised_at_the_seeds_where_its_image_is_nearest_its_scene():
    d = {"moon": {1: {"moon": 60.0, "tree": 80.0}, 2: {"moon": 130.0, "tree": 80.0}}, "tree": {1: {"moon": 90.0, "tree": 40.0}}}
    assert world.recognised(d) == {"moon": [1], "tree": [1]}


def test_the_world_is_looked_at_as_the_world_demo_check_draws_it():
    """The world's recognisability (its build's record, the full tier's test) is measured with the check's own
    sampler, steps and guidance: at guidance 1 the world's moon is not its own scene at most seeds."""
    from cml.preset import shipped_presets
    from cml.preset.load import load_preset

    check = load_preset(shipped_presets()["demo-world"], ["base_model='m.safetensors'", "source='a.png'"])[0].check
    assert (check.sampler, check.sampling_steps, check.guidance_scale) == tuple(world.LOOK)
    assert world.LOOK.scale > 1.0


def test_the_world_training_is_its_scenes_captioned_by_their_words_with_the_recipe(tmp_path):
    import tomllib

    toml = world.write_world_training(tmp_path / "w", tmp_path / "demo.safetensors", tmp_path / "tok", steps=8)
    train = tomllib.loads(toml.read_text())
    dataset = tomllib.loads((tmp_path / "w" / "dataset.toml").read_text())
    images = tmp_path / "w" / "images"
    assert sorted(p.stem for p in images.glob("*.png")) == sorted(world.WORDS)
    assert all((images / f"{w}.txt").read_text() == w for w in world.WORDS)
    assert dataset["general"]["batch_size"] == world.RECIPE["batch"] and dataset["datasets"][0]["subsets"][0]["image_dir"] == str(images)
    assert (train["network_dim"], train["learning_rate"], train["max_train_steps"]) == (world.RECIPE["dim"], world.RECIPE["learning_rate"], 8)
    assert train["network_train_unet_only"] and train["pretrained_model_name_or_path"] == str(tmp_path / "demo.safetensors")
    full = world.write_world_training(tmp_path / "full", tmp_path / "demo.safetensors", tmp_path / "tok")
    assert tomllib.loads(full.read_text())["max_train_steps"] == world.RECIPE["steps"]
