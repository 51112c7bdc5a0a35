"""Image A as the model's VAE gives it back: encode, then decode. Run in sd-scripts' Python.

No model can draw A better than its own VAE returns it, so the copy check measures against this
round trip, not against A itself. The VAE is read with sd-scripts' own loader (``model_util.load_vae``:
single-file checkpoints of every family, and diffusers folders); it runs in fp32, where no VAE overflows.

    python -m cml.sd_process.vae_roundtrip MODEL IMAGE SIZE OUT [IMAGE OUT ...]

Several As (a multi-image source) share one load of the VAE: each further IMAGE OUT pair at the same SIZE.
"""

from __future__ import annotations

import sys


def roundtrip(model: str, image: str, size: int, out: str, *more: tuple[str, str]) -> None:
    """IMAGE's round trip to OUT, then each further (image, out) pair's, through one load of MODEL's VAE."""
    import numpy as np
    import torch
    from library import model_util
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = model_util.load_vae(model, torch.float32).to(device).train(False)  # inference mode
    for src, dest in [(image, out), *more]:
        a = Image.open(src).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(a, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        pixels = ((y[0].permute(1, 2, 0).float().cpu().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(dest)


def main(argv: list[str]) -> int:
    rest = argv[4:]
    if len(rest) % 2:
        print("vae_roundtrip: each further image needs its output path", file=sys.stderr)
        return 2
    roundtrip(argv[0], argv[1], int(argv[2]), argv[3], *zip(rest[::2], rest[1::2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
