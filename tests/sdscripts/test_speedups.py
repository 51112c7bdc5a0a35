"""cml's exact speed-ups (cml/sd_process/train.py, cml/sd_process/lora.py) give the same LoRA as sd-scripts' own trainer,
bit for bit, at the same seed; each is also checked on its own where it can be."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from cml.safetensors_file import read_metadata
from tests.conftest import run_cml
from tests.conftest import sd_preset as preset


@pytest.fixture(scope="module")
def sd_path(sd_scripts):
    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    return sd_scripts.path


# Intel's Conditional Numerical Reproducibility: MKL's kernels then give the same bits wherever a tensor lies in
# memory. Without it they may not: measured, the text encoder's output kept (one allocation less per step) changed 82
# of 576 tensors of a 2-step copy LoRA by float rounding (at most 2.4e-7), and two runs of one trainer are identical;
# with it, the LoRAs of both trainers are identical bit for bit.
REPRODUCIBLE_MKL = {"MKL_CBWR": "COMPATIBLE"}


@pytest.mark.full
@pytest.mark.parametrize("merge", ["checkpoint", "in_memory"])
def test_the_speedups_train_the_same_lora_bit_for_bit(demo_assets, tmp_path, merge):
    """Copy and diff stages trained through cml's trainer and through train_network.py itself: the same tensors
    (with MKL's reproducible mode: see REPRODUCIBLE_MKL)."""
    out = {}
    for speedups in (True, False):
        d = tmp_path / str(speedups)
        d.mkdir()
        p = preset(d, demo_assets, speedups=speedups, merge=merge, copy={"steps": 4}, diff={"steps": 3})
        r = run_cml("run", str(p), "--quiet", env=REPRODUCIBLE_MKL, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        run = d / "runs" / "e2e"
        log = (run / "copy" / "log.txt").read_text()
        assert ("-m cml.sd_process.train train_network" in log) == speedups  # which trainer ran
        if speedups:  # the diff stage's load skips the random draws (the copy stage's load, or an earlier one, learnt them)
            assert "cml: model load: no random initialisation drawn" in (run / "diff-grayscale" / "log.txt").read_text()
        names = ("copy/copy.safetensors", "diff-grayscale/grayscale.safetensors")
        out[speedups] = {name: load_file(str(run / name)) for name in names}
        # sd-scripts' record of the model each stage trained on (cml's trainer answers it from cml's hash cache): its
        # sha256. The diff stage's model is the run's own merged file in the checkpoint mode (its modelspec.date differs
        # from run to run), the base in memory.
        trained_on = {names[0]: demo_assets["model"], names[1]: run / "merge" / "copy_machine.safetensors" if merge == "checkpoint" else demo_assets["model"]}
        for name in names:
            with open(trained_on[name], "rb") as f:
                assert read_metadata(run / name)["ss_new_sd_model_hash"] == hashlib.file_digest(f, "sha256").hexdigest(), name
    for name, fast in out[True].items():
        slow = out[False][name]
        assert fast.keys() == slow.keys() and len(fast) == 576
        assert all(np.array_equal(fast[k], slow[k]) for k in fast), f"{name}: the speed-ups changed the LoRA"


def test_the_lora_forward_without_multiplies_by_one_is_the_same(sd_path):
    import torch
    from networks import lora

    from cml.sd_process import lora as cml_lora  # noqa: F401  (patches networks.lora.LoRAModule.forward in this process)
    from cml.sd_process.patches import ORIGINALS

    torch.manual_seed(0)
    for org in (torch.nn.Linear(32, 48), torch.nn.Conv2d(8, 12, 3, padding=1)):
        module = lora.LoRAModule("lora_unet_x", org, multiplier=1.0, lora_dim=4, alpha=4)
        module.apply_to()
        torch.nn.init.normal_(module.lora_up.weight)
        x = torch.randn(2, 32) if isinstance(org, torch.nn.Linear) else torch.randn(2, 8, 6, 6)
        for m in (1.0, 0.0, -0.25, 0.7):
            module.multiplier = m
            with torch.no_grad():
                ours = module(x)
                theirs = ORIGINALS["lora-forward"](module, x)
            assert torch.equal(ours, theirs), f"multiplier {m}"


def test_the_text_encoder_output_is_kept_for_each_distinct_batch_of_tokens(sd_path):
    """A few captions in shuffled batches (the world's three words at batch 3): each order encoded once, then kept;
    never while the text encoder trains, and no more than KEEP batches kept."""
    import torch

    from cml.sd_process.trainer import FixedTextEncoding

    calls = []

    class Encoding:
        def encode_tokens(self, tokenize_strategy, models, tokens):
            calls.append(tokens[0].clone())
            return [tokens[0].float() * 2]

    enc = FixedTextEncoding(Encoding())
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
    with torch.no_grad():
        first = enc.encode_tokens(None, None, [a])
        assert enc.encode_tokens(None, None, [a.clone()]) is first and len(calls) == 1  # the same tokens: kept
        assert torch.equal(enc.encode_tokens(None, None, [b])[0], b.float() * 2) and len(calls) == 2  # others: encoded
        assert enc.encode_tokens(None, None, [a.clone()]) is first and len(calls) == 2  # a again, after b: still kept
        assert torch.equal(enc.encode_tokens(None, None, [a.long().flip(1)])[0], a.flip(1).float() * 2)  # another order
        assert len(calls) == 3 and enc.reused == 2
        for i in range(FixedTextEncoding.KEEP + 4):  # many batches: the first KEEP kept, the rest encoded every time
            enc.encode_tokens(None, None, [torch.tensor([[100 + i]])])
        kept = len(calls)
        enc.encode_tokens(None, None, [torch.tensor([[100 + FixedTextEncoding.KEEP + 3]])])
        assert len(calls) == kept + 1
    enc.encode_tokens(None, None, [b])  # with gradients on (a text encoder that trains): always encoded
    assert len(calls) == kept + 2


def test_an_8bit_step_without_a_sync_per_parameter_is_the_same(sd_path):
    """bitsandbytes' AdamW8bit, its own step against cml's (on this machine's device: the sync is the only change)."""
    bnb = pytest.importorskip("bitsandbytes")
    import torch

    from cml.sd_process.patches import unsynced_step

    def train(step) -> list:
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(64, 16) * 0.1) for _ in range(3)] + [torch.nn.Parameter(torch.randn(16, 4096) * 0.1)]
        opt = bnb.optim.AdamW8bit(ps, lr=1e-2)
        for i in range(3):
            for p in ps:
                p.grad = torch.sin(p.detach() * (i + 1))
            step(opt)
        return [p.detach().clone() for p in ps]

    try:
        theirs = train(lambda o: o.step())
    except Exception as e:  # no 8-bit optimizer on this device
        pytest.skip(f"bitsandbytes' AdamW8bit does not step here: {type(e).__name__}: {e}")
    ours = train(lambda o: unsynced_step(o))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_load_skips_the_random_draws_and_leaves_the_generator_where_they_would(sd_path, tmp_path, monkeypatch):
    """cml/sd_process/model_init.py around a stand-in loader that builds a layer (its initialisation draws from torch's
    generator): the first load from a state draws and learns where it leaves the generator; the next load from that
    state draws nothing and leaves the generator there; a damaged learnt state is not used; a load that moves numpy's
    generator is not learnt from."""
    import numpy as np
    import torch

    from cml.sd_process import model_init

    drew: list[bool] = []

    def stand_in(v2, ckpt_path, device="cpu", dtype=None, unet_use_linear_projection_in_v2=True):
        before = torch.get_rng_state()
        layer = torch.nn.Linear(256, 256)
        drew.append(not torch.equal(before, torch.get_rng_state()))
        if ckpt_path == "moves numpy":
            np.random.rand()
        return layer

    monkeypatch.setenv("CML_INIT_RNG_DIR", str(tmp_path / "init-rng"))
    load = model_init.without_init(stand_in, exact=True)

    def from_seed(seed: int, path: str = "model.safetensors") -> torch.Tensor:
        torch.manual_seed(seed)
        load(False, path)
        return torch.get_rng_state()

    drawn = from_seed(7)
    assert drew == [True] and len(list((tmp_path / "init-rng").iterdir())) == 1
    assert torch.equal(from_seed(7), drawn) and drew[-1] is False  # learnt: no draws, the same generator state
    assert not torch.equal(from_seed(8), drawn) and drew[-1] is True  # another state before: drawn
    for f in (tmp_path / "init-rng").iterdir():
        f.write_bytes(b"damaged")
    assert torch.equal(from_seed(7), drawn) and drew[-1] is True  # a damaged state: drawn (and learnt again)
    assert torch.equal(from_seed(7), drawn) and drew[-1] is False
    for f in (tmp_path / "init-rng").iterdir():
        f.unlink()
    from_seed(7, "moves numpy")
    assert drew[-1] is True and not list((tmp_path / "init-rng").iterdir())  # numpy's generator moved: nothing learnt


@pytest.mark.full
def test_the_check_generator_draws_gen_imgs_own_images(sd_scripts, demo_assets, tmp_path):
    """The check's generator through cml (cml/sd_process/gen.py: the models built without random draws) and gen_img.py
    itself: the same pixels, at two seeds."""
    import subprocess

    from PIL import Image

    from cml.render.scripts import CML_GEN
    from cml.sdscripts import python_env

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a --d 3\na --d 4\n")
    images = {}
    for name, command in (("cml", [sys.executable, "-m", CML_GEN, "gen_img"]), ("sd-scripts", [sys.executable, "gen_img.py"])):
        out = tmp_path / name
        out.mkdir()
        argv = [*command, "--ckpt", str(demo_assets["model"]), "--outdir", str(out), "--from_file", str(prompts), "--W", "64", "--H", "64"]
        argv += ["--steps", "3", "--sampler", "euler_a", "--scale", "1.0", "--batch_size", "2", "--images_per_prompt", "1", "--sequential_file_name"]
        argv += ["--sdpa", "--tokenizer_cache_dir", str(demo_assets["tokenizer"])]
        r = subprocess.run(argv, cwd=sd_scripts.path, env=python_env(sd_scripts), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("no random initialisation drawn" in r.stdout) == (name == "cml")
        images[name] = [np.asarray(Image.open(f)) for f in sorted(out.glob("im_*.png"))]
    assert len(images["cml"]) == len(images["sd-scripts"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(images["cml"], images["sd-scripts"]))
    assert not np.array_equal(*images["cml"])  # two seeds, two images: the comparison can tell images apart


@pytest.mark.full
def test_several_captions_in_shuffled_batches_train_the_same_lora_bit_for_bit(sd_scripts, demo_assets, tmp_path):
    """The world's training (three scenes, a word each, batch 3, shuffled): cml's trainer keeps each batch's text
    encoding and reuses it; train_network.py itself encodes every step. The same LoRA (MKL's reproducible mode)."""
    import tomllib

    import tomli_w

    from cml.demo.world import write_world_training
    from cml.runner import run_logged
    from cml.sdscripts import python_env

    out = {}
    for speedups in (True, False):
        work = tmp_path / str(speedups)
        toml = write_world_training(work, demo_assets["model"], demo_assets["tokenizer"], steps=8)
        if speedups:
            argv = [sys.executable, "-m", "cml.sd_process.train", "train_network", "--config_file", str(toml)]
        else:
            toml.write_text(tomli_w.dumps({**tomllib.loads(toml.read_text()), "network_module": "networks.lora"}))
            argv = [sys.executable, "train_network.py", "--config_file", str(toml)]
        res = run_logged(argv, sd_scripts.path, {**python_env(sd_scripts), **REPRODUCIBLE_MKL}, work / "log.txt")
        assert res.returncode == 0, "\n".join(res.tail)
        log = (work / "log.txt").read_text()
        assert ("cml: text encoding: each distinct batch of captions encoded once, then kept" in log) == speedups
        out[speedups] = load_file(str(work / "world.safetensors"))
    fast, slow = out[True], out[False]
    assert fast.keys() == slow.keys() and len(fast) > 0
    assert all(np.array_equal(fast[k], slow[k]) for k in fast), "the speed-ups changed the world's LoRA"
