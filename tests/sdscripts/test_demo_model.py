"""The demo model's hand-set parts do what cml/sd_process/demo_model.py says (sd-scripts' own module classes)."""

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.full  # the full tier: `make test-full`


@pytest.fixture(scope="module")
def torch_sd(sd_scripts):
    if str(sd_scripts.path) not in sys.path:
        sys.path.insert(0, str(sd_scripts.path))
    return pytest.importorskip("torch")


def _tensor(torch, img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def test_hand_built_vae_returns_a_at_one_eighth_linear_and_gray_stays_gray(torch_sd):
    torch = torch_sd
    from cml.demo import demo_image
    from cml.sd_process.demo_model import hand_built_vae

    vae = hand_built_vae().eval()
    x = _tensor(torch, demo_image(64))
    gray = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode()
        y = vae.decode(lat).sample
        y_half = vae.decode(vae.encode(0.5 * x).latent_dist.mode()).sample
        y_gray = vae.decode(vae.encode(gray).latent_dist.mode()).sample
    assert lat.shape == (1, 4, 8, 8)
    assert 0.7 < float((lat * 0.18215)[:, :3].std()) < 1.6  # about unit variance, like a real SD VAE's latents
    small, back = torch.nn.functional.avg_pool2d(x, 8), torch.nn.functional.avg_pool2d(y, 8)
    for c in range(3):
        assert np.corrcoef(small[0, c].flatten(), back[0, c].flatten())[0, 1] > 0.97
    assert float((y_half - 0.5 * y).abs().max()) < 0.01  # linear: no per-image normalisation
    assert float((y_gray.max(1).values - y_gray.min(1).values).max()) < 1e-4  # gray stays gray


def test_identity_path_unet_predicts_eps_equal_to_its_input(torch_sd):
    """The base model alone knows nothing of images: it predicts eps = x_t, whatever t and the text."""
    torch = torch_sd
    from library import model_util
    from library.original_unet import UNet2DConditionModel

    from cml.sd_process.demo_model import identity_path_unet

    torch.manual_seed(0)
    unet = identity_path_unet(UNet2DConditionModel(**model_util.create_unet_diffusers_config(False))).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for t in (10, 500, 990):
            out = unet(x, torch.tensor([t, t]), torch.randn(2, 77, 768)).sample
            rel = float((out - x).norm() / x.norm())
            assert rel < 0.1, f"t={t}: |eps - x_t| / |x_t| = {rel:.3f}"


def test_several_as_round_trip_through_one_load_of_the_vae_as_each_would_alone(sd_scripts, demo_assets, tmp_path):
    """cml/sd_process/vae_roundtrip.py with two (image, out) pairs, on the demo model in sd-scripts' Python: each
    output is the one a call for that image alone makes (the leakage measure's reference for each A)."""
    import subprocess

    from PIL import Image, ImageOps

    from cml.sdscripts import python_env

    a2 = tmp_path / "a2.png"
    ImageOps.mirror(Image.open(demo_assets["a"]).convert("RGB")).save(a2)
    mod = [sys.executable, "-m", "cml.sd_process.vae_roundtrip", str(demo_assets["model"])]
    run = lambda *args: subprocess.run([*mod, *args], cwd=sd_scripts.path, env=python_env(sd_scripts), capture_output=True, text=True)  # noqa: E731
    both = run(str(demo_assets["a"]), "64", str(tmp_path / "1.png"), str(a2), str(tmp_path / "2.png"))
    assert both.returncode == 0, both.stderr[-2000:]
    alone = run(str(a2), "64", str(tmp_path / "2-alone.png"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    pix = lambda name: np.asarray(Image.open(tmp_path / name).convert("RGB"))  # noqa: E731
    assert np.array_equal(pix("2.png"), pix("2-alone.png")) and not np.array_equal(pix("1.png"), pix("2.png"))
    odd = run(str(demo_assets["a"]), "64", str(tmp_path / "x.png"), str(a2))
    assert odd.returncode == 2 and "needs its output path" in odd.stderr
