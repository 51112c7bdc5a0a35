"""Rendered files against sd-scripts' own readers and validators (no training)."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest

from cml.render.run_folder import render
from tests.conftest import make_checkpoint, plan_for


@pytest.fixture(scope="module")
def sd(sd_scripts):
    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    return sd_scripts


def _parser(script: str) -> argparse.ArgumentParser:
    return importlib.import_module(script).setup_parser()


def _check_value(action: argparse.Action, key: str, value):
    """Would sd-scripts' parser accept this value for this option?"""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        assert isinstance(value, bool), f"{key}: {value!r} must be a boolean"
        return
    values = value if action.nargs in ("*", "+") else [value]
    if action.nargs in ("*", "+"):
        assert isinstance(value, list), f"{key}: {value!r} must be a list"
    for v in values:
        assert not isinstance(v, (list, dict)), f"{key}: nested value {v!r}"
        # Config values bypass argparse's type conversion: the value must already be what it would produce.
        converted = action.type(str(v)) if action.type and not isinstance(v, bool) else v
        if isinstance(converted, Path):
            assert isinstance(v, str), f"{key}: {v!r} must be a path string"  # sd-scripts opens str and Path alike
            continue
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            assert isinstance(v, (int, float)) and converted == v, f"{key}: {v!r} should be the number {converted!r}"
            continue
        assert type(converted) is type(v) or action.type is None, f"{key}: {v!r} should be {type(converted).__name__}"
        if action.type is None:
            assert isinstance(v, str), f"{key}: {v!r} must be a string (sd-scripts does not convert config values)"
        elif action.type in (int, float):
            assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{key}: {v!r} must be a number, not {type(v).__name__}"
            assert converted == v
        if action.choices is not None:
            assert converted in action.choices, f"{key}: {v!r} not in {action.choices}"


@pytest.mark.parametrize("family, script", [("sd1", "train_network"), ("sd2", "train_network"), ("sdxl", "sdxl_train_network")])
@pytest.mark.parametrize("merge", ["checkpoint", "in_memory"])
def test_every_training_toml_key_is_an_option_with_an_acceptable_value(sd, tmp_path, write_preset, family, script, merge, monkeypatch):
    model = make_checkpoint(tmp_path / f"{family}.safetensors", family)
    vpred = {"v_parameterization": False} if family == "sd2" else {}  # an SD2 file says nothing: the preset must
    plan = plan_for(write_preset(base_model=str(model), merge=merge, baseline=True, train={"resolution": 64, "extra": {"noise_offset": 0.05}}, **vpred))
    render(plan, sd.path)
    assert check_train_tomls(plan, script, monkeypatch) == sum(st.kind == "train" for st in plan.stages)


def check_train_tomls(plan, script: str, monkeypatch) -> int:
    """Every stage's train.toml against ``script``'s own parser: known options, values it accepts, read back by
    sd-scripts' own config loader unchanged. Returns the stages checked."""
    import toml
    from library import train_util

    parser = _parser(script)
    actions = {a.dest: a for a in parser._actions}
    checked = 0
    for st in plan.stages:
        if st.kind != "train":
            continue
        path = st.dir / "train.toml"
        cfg = toml.load(path)
        unknown = sorted(set(cfg) - set(actions))
        assert not unknown, f"{st.name}: options {script}.py does not know: {unknown}"
        for key, value in cfg.items():
            _check_value(actions[key], key, value)
        monkeypatch.setattr(sys, "argv", [f"{script}.py", "--config_file", str(path)])
        args = train_util.read_config_from_file(parser.parse_args(["--config_file", str(path)]), parser)
        assert args.pretrained_model_name_or_path == str(st.model)
        assert args.network_dim == st.settings.dim and args.max_train_steps == st.settings.steps
        assert args.dataset_config == str(st.dir / "dataset.toml")
        checked += 1
    return checked


@pytest.mark.parametrize("family", ["flux", "chroma", "sd3", "lumina", "anima", "hunyuan_image"])
def test_every_dit_familys_train_toml_is_its_trainers(sd, tmp_path, write_preset, family, monkeypatch):
    """Each DiT family planned on small header-only files (tests/conftest.py dit_model), every stage's argv naming
    its trainer and every train.toml read by that trainer's own parser."""
    from cml.families import FAMILIES
    from cml.render.scripts import stage_argv
    from tests.conftest import dit_model

    f = FAMILIES[family]
    base, files = dit_model(tmp_path, family)
    plan = plan_for(write_preset(base_model=str(base), model_files=files, merge=f.merges[0], train={"resolution": 64, "extra": {"noise_offset": 0.05}}))
    render(plan, sd.path)
    assert all(stage_argv(plan, st)[3] == f.trainer for st in plan.stages if st.kind == "train")
    assert check_train_tomls(plan, f.trainer, monkeypatch) == 2


def test_every_dataset_toml_passes_config_sanitizer(sd, write_preset):
    from library.config_util import BlueprintGenerator, ConfigSanitizer, load_user_config

    plan = plan_for(write_preset(targets={"g": {"transform": "grayscale"}, "s": {"transform": "sepia"}}, train={"resolution": 64, "caption": "a photo"}))
    render(plan, sd.path)
    sanitizer = ConfigSanitizer(True, True, False, True)  # as train_network.py builds it
    for st in plan.stages:
        if st.kind == "train":
            user = load_user_config(str(st.dir / "dataset.toml"))
            sanitized = sanitizer.sanitize_user_config(user)
            assert sanitized["datasets"][0]["subsets"][0]["image_dir"] == str(st.images_dir)
            ns = argparse.Namespace(**{k: None for k in ("train_data_dir", "reg_data_dir", "in_json")})
            # The blueprint step fills defaults from argparse; a parsed default namespace stands in for the CLI.
            args = importlib.import_module("train_network").setup_parser().parse_args([])
            vars(ns).update(vars(args))
            BlueprintGenerator(sanitizer).generate(user, ns, tokenizer=None)
            assert (st.images_dir / "000.txt").read_text() == "a photo"


@pytest.mark.parametrize("name", ["with space", "quote'and\"double", "back\\slash", "ünïcødé-日本"])
def test_paths_round_trip_through_read_config_from_file(sd, tmp_path, write_preset, ckpt, name, monkeypatch):
    from library import train_util

    folder = tmp_path / name
    folder.mkdir()
    model = folder / "base.safetensors"
    model.write_bytes(ckpt.read_bytes())
    plan = plan_for(write_preset(base_model=str(model), output_dir=str(folder / "runs")))
    render(plan, sd.path)
    parser = _parser("train_network")
    copy = plan.stage("copy")
    monkeypatch.setattr(sys, "argv", ["train_network.py", "--config_file", str(copy.dir / "train.toml")])
    args = train_util.read_config_from_file(parser.parse_args(["--config_file", str(copy.dir / "train.toml")]), parser)
    assert args.pretrained_model_name_or_path == str(model)
    assert args.output_dir == str(copy.work_dir) and Path(args.logging_dir) == copy.dir / "logs"


@pytest.mark.usefixtures("sd")  # sd-scripts on the path
def test_cml_bucket_rule_is_sd_scripts_bucket_manager():
    """cml.images.bucket refuses exactly the images BucketManager.select_bucket crashes on, and agrees on the rest."""
    import random

    from library.train_util import BucketManager

    from cml.images import bucket

    rng = random.Random(0)
    sizes = [(96, 80, 64), (8192, 100, 512), (4000, 64, 128), (512, 768, 512), (64, 64, 64)]
    sizes += [(rng.randint(16, 9000), rng.randint(16, 200 if i % 3 == 0 else 9000), rng.choice([64, 128, 512, 1024])) for i in range(2000)]
    for w, h, res in sizes:
        bm = BucketManager(True, (res, res), 256, 1024, 64)  # cml's dataset settings: bucket_no_upscale, steps 64
        try:
            theirs = bm.select_bucket(w, h)[0]
            theirs = theirs if theirs[0] > 0 and theirs[1] > 0 else None
        except ZeroDivisionError:
            theirs = None
        assert bucket(w, h, res) == theirs, (w, h, res)


def test_train_extra_is_checked_against_the_trainers_own_parser(sd_scripts, write_preset, tmp_path):
    from tests.conftest import run_cml

    p = write_preset(train={"steps": 3, "resolution": 64, "extra": {"noise_ofset": 0.05}})
    r = run_cml("plan", str(p), "--sd-scripts", str(sd_scripts.path))
    assert r.returncode == 2 and "'noise_ofset' is not an option of train_network.py; did you mean 'noise_offset'?" in r.stderr
    assert not (tmp_path / "runs").exists()
    for managed in ("max_train_epochs", "save_state", "base_weights_multiplier", "max_train_steps"):  # intermediate saves are allowed: kept in extra/
        p = write_preset(train={"steps": 3, "resolution": 64, "extra": {managed: 1}})
        r = run_cml("plan", str(p), "--sd-scripts", str(sd_scripts.path))
        assert r.returncode == 2 and f"train.extra sets {managed}, which cml manages" in r.stderr, r.stderr
    p = write_preset(train={"steps": 3, "resolution": 64, "extra": {"noise_offset": 0.05}})
    assert run_cml("plan", str(p), "--sd-scripts", str(sd_scripts.path)).returncode == 0


@pytest.mark.parametrize("script", ["gen_img", "sdxl_gen_img"])
@pytest.mark.usefixtures("sd")
def test_check_sampler_choices_are_gen_imgs_own(script):
    """check.sampler offers exactly what gen_img.py / sdxl_gen_img.py accept, so a preset cannot fail mid-check."""
    from typing import get_args

    from cml.preset.models import Sampler

    action = next(a for a in _parser(script)._actions if a.dest == "sampler")
    assert list(get_args(Sampler)) == list(action.choices)


@pytest.mark.usefixtures("sd")
def test_optimizer_names_are_sd_scripts_own_and_torchs():
    """train.optimizer accepts what get_optimizer at the pinned commit runs: its own names (read from its source), and
    torch.optim's classes by their exact name, less those that cannot train a LoRA as sd-scripts calls them."""
    import ast
    import inspect

    import torch
    from library import train_util

    from cml.preset.models import SD_SCRIPTS_OPTIMIZERS, TORCH_OPTIMIZERS, TORCH_OPTIMIZERS_REFUSED

    tree = ast.parse(inspect.getsource(train_util.get_optimizer))

    def lowered(node) -> str | None:  # "Name".lower()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lower" and isinstance(node.func.value, ast.Constant):
            return node.func.value.value
        return None

    # every name that get_optimizer compares optimizer_type with: `optimizer_type == "Name".lower()`
    named = {lowered(n.comparators[0]) for n in ast.walk(tree) if isinstance(n, ast.Compare) and isinstance(n.ops[0], ast.Eq)} - {None}
    assert set(SD_SCRIPTS_OPTIMIZERS) == named
    classes = {n for n, c in vars(torch.optim).items() if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    own = {o.lower() for o in SD_SCRIPTS_OPTIMIZERS}
    assert set(TORCH_OPTIMIZERS) | set(TORCH_OPTIMIZERS_REFUSED) == {c for c in classes if c.lower() not in own}
