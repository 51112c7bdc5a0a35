"""Shared fixtures: hand-made checkpoints and images, presets, the fake and the real sd-scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FAKE_SD = Path(__file__).resolve().parent / "fake_sd_scripts"
# The tests' own cache (demo model, tokenizers, hashes, probe answers), shared by every test of every session;
# the user's ~/.cache/cml is never read or written (tests/test_zz_user_cache.py proves it).
TEST_CACHE = Path(os.environ.get("CML_TEST_CACHE") or ROOT / ".test-cache").resolve()
USER_CACHE = Path.home() / ".cache" / "cml"

SD1_TE = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD2_TE = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
SDXL_TE = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime (empty when the folder does not exist)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def pytest_configure(config):
    # Before any test runs or any cml code reads it: every cml process of the suite uses the tests' cache.
    os.environ["CML_CACHE_DIR"] = str(TEST_CACHE)
    config.cml_user_cache_before = snapshot(USER_CACHE)


def pytest_sessionfinish(session, exitstatus):
    """With pytest-xdist (make test runs tests/cli and tests/unit two at a time) no test runs after all the others:
    the controller checks what tests/test_zz_user_cache.py checks in a one-process session."""
    controller = getattr(session.config, "workerinput", None) is None and getattr(session.config.option, "numprocesses", None)
    if controller and snapshot(USER_CACHE) != session.config.cml_user_cache_before:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        tr.ensure_newline()
        tr.write_line(f"FAILED: the suite changed {USER_CACHE} (the user's cache; every cml process of the suite must use {TEST_CACHE})", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/sdscripts/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.sdscripts)
    # The user's-cache check runs last, after everything else the session runs.
    last = [i for i in items if i.name == "test_the_suite_left_the_users_cache_untouched"]
    items[:] = [i for i in items if i not in last] + last


def make_checkpoint(path: Path, family: str = "sd1", metadata: dict | None = None) -> Path:
    """A tiny safetensors file with the keys family detection reads."""
    import torch
    from safetensors.torch import save_file

    te = {"sd1": SD1_TE, "sd2": SD2_TE, "sdxl": SDXL_TE}[family]
    sd = {
        te: torch.zeros(4, 4, dtype=torch.float16),
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4).half(),
        "model.diffusion_model.out.2.weight": torch.randn(4, 4).half(),
        "first_stage_model.decoder.conv_in.weight": torch.ones(2, 2).half(),
    }
    save_file(sd, str(path), metadata)
    return path


# Keys that make a file pass for a family's base model or a [model_files] part (cml reads headers only): name -> shape.
FAMILY_KEYS = {
    "flux": {
        "double_blocks.0.img_attn.qkv.weight": (12, 4),
        "single_blocks.0.linear1.weight": (4, 4),
        "guidance_in.in_layer.bias": (4,),
        "double_blocks.0.img_attn.norm.key_norm.scale": (4,),
    },
    "chroma": {"distilled_guidance_layer.in_proj.weight": (4, 4), "double_blocks.0.img_attn.qkv.weight": (12, 4)},
    "sd3": {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (12, 4),
        "model.diffusion_model.x_embedder.proj.weight": (4, 4, 2, 2),
        "first_stage_model.decoder.conv_in.weight": (4, 4),
    },
    "lumina": {"cap_embedder.0.weight": (4,), "layers.0.attention.qkv.weight": (12, 4)},
    "anima": {"net.llm_adapter.embed.weight": (4, 4), "net.blocks.0.self_attn.q_proj.weight": (4, 4)},
    "hunyuan_image": {"byt5_in.fc1.weight": (4, 4), "double_blocks.0.img_attn_qkv.weight": (12, 4)},
}
PART_KEYS = {
    "clip_l": {"text_model.encoder.layers.0.self_attn.q_proj.weight": (4, 4), "text_model.embeddings.token_embedding.weight": (8, 768)},
    "clip_g": {"text_model.encoder.layers.0.self_attn.q_proj.weight": (4, 4), "text_model.embeddings.token_embedding.weight": (8, 1280)},
    "t5xxl": {"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)},
    "ae": {"decoder.conv_in.weight": (4, 4), "encoder.conv_in.weight": (4, 4)},
    "vae": {"decoder.conv_in.weight": (4, 4)},
    "gemma2": {"model.layers.0.self_attn.q_proj.weight": (4, 4)},
    "text_encoder": {"model.layers.0.self_attn.q_proj.weight": (4, 4)},
    "byt5": {"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)},
}


def small_file(path: Path, keys: dict) -> Path:
    """A small safetensors file (random float16 tensors) with these keys: enough for cml, which reads headers."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({k: rng.standard_normal(shape).astype(np.float16) for k, shape in keys.items()}, str(path))
    return path


def dit_model(folder: Path, family: str) -> tuple[Path, dict[str, str]]:
    """A DiT family's base model and the [model_files] it needs, as small files: (base, model_files)."""
    from cml.families import FAMILIES

    base = small_file(folder / f"{family}.safetensors", FAMILY_KEYS[family])
    files = {}
    for key in FAMILIES[family].files:
        if key == "qwen3":
            q = folder / "qwen3"
            q.mkdir(exist_ok=True)
            (q / "config.json").write_text('{"model_type": "qwen3"}')
            files[key] = str(q)
        else:
            files[key] = str(small_file(folder / f"{key}.safetensors", PART_KEYS[key]))
    return base, files


def colourful(size=(96, 96)) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, 1 - x / w * 0.5], -1) * 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return make_checkpoint(tmp_path / "base.safetensors")


@pytest.fixture
def image_a(tmp_path) -> Path:
    p = tmp_path / "a.png"
    colourful().save(p)
    return p


def tokenizer_dir() -> Path:
    """A tokenizer_cache_dir that passes cml's offline check (the folders sd-scripts looks for; empty: the fake
    trainer never reads them). Tests that train for real use the demo's tokenizers (demo_assets)."""
    import tempfile

    from cml.families import FAMILIES

    root = Path(tempfile.gettempdir()) / "cml-test-tokenizers"
    for f in FAMILIES.values():
        for model_id in f.tokenizers:
            (root / model_id.replace("/", "_")).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def write_preset(tmp_path, ckpt, image_a):
    """Write a preset (defaults: the tiny checkpoint, image A, one grayscale target) and return its path."""

    def write(extra: dict | None = None, filename: str = "preset.toml", **top) -> Path:
        data = {
            "version": 2,
            "name": "t",
            "base_model": str(ckpt),
            "source": str(image_a),
            "output_dir": str(tmp_path / "runs"),
            "device": "cpu",
            "targets": {"grayscale": {"transform": "grayscale"}},
            "train": {"steps": 3, "resolution": 64},
            "tokenizer_cache_dir": str(tokenizer_dir()),  # offline: sd-scripts' tokenizers, cached
        }
        data.update(top)
        for k, v in (extra or {}).items():
            data[k] = v
        p = tmp_path / filename
        p.write_text(tomli_w.dumps(data))
        return p

    return write


def plan_for(preset_path, sets=None):
    """Config -> inputs -> plan for a preset file, in this process (no sd-scripts, nothing written)."""
    from cml.inputs import load_inputs
    from cml.preset import load_preset
    from cml.stages import build_plan

    preset, digest = load_preset(preset_path, sets)
    return build_plan(preset, digest, load_inputs(preset), "c0ffee")


def sigint_as_a_terminal_sends_it() -> None:
    """preexec_fn of a cml that a test stops with Ctrl-C's SIGINT: a suite started in the background (`make test &`)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cml_to_interrupt(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m cml ...` in its own process group, for a test to stop with Ctrl-C's SIGINT (os.killpg)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cml", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )


def run_cml(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m cml ...` as a user runs it (from ``cwd``); captured output."""
    e = dict(os.environ, **(env or {}))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))  # this checkout's cml, from any folder
    return subprocess.run([sys.executable, "-m", "cml", *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=cwd)


@pytest.fixture
def fake_sd():
    return str(FAKE_SD)


# --------------------------------------------------------------- real sd-scripts


@pytest.fixture(scope="session")
def sd_scripts():
    from cml.errors import InputError
    from cml.sdscripts import check_imports, locate

    try:
        sd = locate()
    except InputError as e:
        pytest.skip(f"sd-scripts not available ({e.what}); run `make setup SD_SCRIPTS_SOURCE=...` to run these tests")
    err = check_imports(sd)
    if err:
        pytest.skip(f"sd-scripts at {sd.path} does not import ({err}); run `make setup`")
    return sd


@pytest.fixture(scope="session")
def demo_assets(sd_scripts):
    """The demo model, tokenizer and A, built once into the tests' cache (tests/test_zz_user_cache.py)."""
    from cml.demo import demo_a, demo_sd15_checkpoint, tokenizer_dir

    return {"model": demo_sd15_checkpoint(sd_scripts.path), "tokenizer": tokenizer_dir(), "a": demo_a()}


@pytest.fixture(scope="session")
def small_run(sd_scripts, demo_assets, tmp_path_factory):
    """The fast tier's real run: copy, merge (merge_lora.py), diff and the check (gen_img.py), a few steps each."""
    tmp = tmp_path_factory.mktemp("small")
    p = sd_preset(
        tmp,
        demo_assets,
        name="small",
        copy={"steps": 4},
        diff={"steps": 3},
        check={"enabled": True, "weights": [0.0, 1.0], "seeds": [1], "prompts": [""], "sampling_steps": 2, "sampler": "euler_a", "guidance_scale": 1.0},
    )
    r = run_cml("run", str(p), timeout=1800)  # output captured: what a log file gets
    assert r.returncode == 0, r.stderr[-4000:]
    return {"dir": tmp / "runs" / "small", "result": r, "preset": p}


@pytest.fixture(scope="session")
def demo_run(sd_scripts, demo_assets, tmp_path_factory):
    """`cml demo`, what `make demo` runs: copy, merge, diff, then the check; shared by every test that reads it."""
    tmp = tmp_path_factory.mktemp("demo")
    r = run_cml("demo", "-o", str(tmp), timeout=2400)
    assert r.returncode == 0, r.stderr[-4000:]
    return {"dir": tmp / "demo", "result": r}


def sd_preset(tmp: Path, assets: dict, **top) -> Path:
    """A preset for the real sd-scripts on the demo assets at 64 px (tests/sdscripts)."""
    data = {
        "version": 2,
        "name": "e2e",
        "base_model": str(assets["model"]),
        "source": str(assets["a"]),
        "tokenizer_cache_dir": str(assets["tokenizer"]),
        "output_dir": str(tmp / "runs"),
        "targets": {"grayscale": {"transform": "grayscale"}},
        "train": {"resolution": 64, "steps": 4},
    }
    data.update(top)
    p = tmp / "preset.toml"
    p.write_text(tomli_w.dumps(data))
    return p


def read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())
