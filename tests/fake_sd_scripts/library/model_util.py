"""Fake sd-scripts `library.model_util`: only `load_vae`, for cml's VAE round trip of image A.

The fake VAE halves the contrast, so a test can tell A from A's round trip. torch is imported only by load_vae:
the fake GPU tests' trainer imports this module beside a fake torch."""

from types import SimpleNamespace


def load_vae(path, dtype):
    import torch

    class FakeVae(torch.nn.Module):
        def encode(self, x):
            return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

        def decode(self, z):
            return SimpleNamespace(sample=z * 0.5)

    print(f"fake load_vae: {path}", flush=True)
    return FakeVae()
