"""The direct method's step (cml/sd_process/train.py), on a stand-in for sd-scripts' trainer: what each pass sees."""

from __future__ import annotations

import sys
import types

import pytest

torch = pytest.importorskip("torch")


class Network:
    def __init__(self):
        self.multiplier = 1.0

    def set_multiplier(self, m):
        self.multiplier = m


class Accelerator:
    @staticmethod
    def unwrap_model(m):
        return m

    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()


class Scheduler:
    def __init__(self):
        self.alphas_cumprod = torch.linspace(0.99, 0.01, 1000)

    def add_noise(self, x, noise, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x + (1 - a).sqrt() * noise


@pytest.fixture
def direct_trainer(monkeypatch):
    """cml's direct Trainer class over a stand-in NetworkTrainer that records every U-Net call."""
    calls: list[dict] = []

    class NetworkTrainer:
        def shift_scale_latents(self, args, latents):
            return latents * 0.5

        def call_unet(self, args, accelerator, unet, noisy, timesteps, conds, batch, weight_dtype):
            calls.append({"noisy": noisy.detach().clone(), "t": timesteps.clone(), "mult": unet.multiplier, "grad": torch.is_grad_enabled()})
            return noisy * 2 + unet.multiplier

    monkeypatch.setitem(sys.modules, "train_network", types.SimpleNamespace(NetworkTrainer=NetworkTrainer))
    from cml.sd_process.direct import DirectStep
    from cml.sd_process.trainer import DirectMethod, compose

    direct = DirectStep("unused.toml", 0.25, (0, 1000))
    cls = compose(sys.modules["train_network"], "train_network", [DirectMethod], {"cml_direct": direct})
    return cls(), direct, calls


def run_step(trainer, direct, a, b, net):
    direct.a_latents = {"000.png": a[0]}
    direct.by_b = {direct.digest(b[0]): "000.png"}  # B known by its cached latents' bytes
    batch = {"latents": b.clone()}
    return trainer.get_noise_pred_and_target(None, Accelerator(), Scheduler(), b, batch, [None], net, net, torch.float32, True)


def test_both_passes_see_the_same_noise_and_timestep_and_the_target_pass_has_the_lora_at_0(direct_trainer):
    trainer, direct, calls = direct_trainer
    net = Network()
    a, b = torch.full((1, 4, 8, 8), 1.0), torch.full((1, 4, 8, 8), -1.0)
    torch.manual_seed(0)
    pred, target, t, _ = run_step(trainer, direct, a, b, net)
    target_call, pred_call = calls
    assert target_call["mult"] == 0.0 and not target_call["grad"]  # the frozen model: LoRA at 0, no gradient
    assert pred_call["mult"] == 0.25 and pred_call["grad"]
    assert torch.equal(target_call["t"], pred_call["t"]) and torch.equal(target_call["t"], t)
    # the same noise: the two noisy latents differ by exactly the scaled difference of their clean latents
    alpha = Scheduler().alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(pred_call["noisy"] - target_call["noisy"], alpha * (b - a * 0.5))
    assert not target.requires_grad and net.multiplier == 0.25  # left at +w: samples show what weight 1 will give


def test_steps_alternate_plus_w_on_b_and_minus_w_on_a_through_the_tenths(direct_trainer):
    trainer, direct, calls = direct_trainer
    net = Network()
    a, b = torch.full((1, 4, 8, 8), 1.0), torch.full((1, 4, 8, 8), -1.0)
    seen = []
    for _ in range(12):
        calls.clear()
        run_step(trainer, direct, a, b, net)
        target_call, pred_call = calls
        # same noise, so prediction input - target input = alpha_t * (its clean latents - the target's):
        # +w: prediction on B (-1), target from A (0.5 once scaled): negative; -w: the other way round
        alpha = float(Scheduler().alphas_cumprod[pred_call["t"][0]].sqrt())
        delta = (pred_call["noisy"] - target_call["noisy"]).mean().item() / alpha
        seen.append((pred_call["mult"], int(pred_call["t"][0]), round(delta, 4)))
    assert [m for m, _, _ in seen] == [0.25, -0.25] * 6
    assert [d for _, _, d in seen] == [-1.5, 1.5] * 6  # +w: B from A; -w: A from B
    assert [t for _, t, _ in seen] == [100, 100, 300, 300, 500, 500, 700, 700, 900, 900, 100, 100]
