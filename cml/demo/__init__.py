"""The demo assets, for `cml demo` and the tests: the demo model, an offline tokenizer and image A.

The demo model (what it is and why: cml/sd_process/demo_model.py) is built once, in a child process, and cached
outside the repository (``CML_CACHE_DIR``, default ``~/.cache/cml``), like the tokenizer and A.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cml.files import atomic_path
from cml.paths import cache_root

DEMO_VERSION = "3"  # bump when the demo assets change


def cache_dir() -> Path:
    return cache_root() / "demo"


# The tokenizer folders sd-scripts looks for in tokenizer_cache_dir (SD1, SDXL's second, SD2), with their pad token.
DEMO_TOKENIZERS = {"openai_clip-vit-large-patch14": "<|endoftext|>", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k": "!", "stabilityai_stable-diffusion-2": "!"}


def tokenizer_dir() -> Path:
    """A --tokenizer_cache_dir holding the demo tokenizers under the names sd-scripts looks for (SD1, SD2, SDXL),
    written once by a child process (cml/sd_process/demo_model.py: transformers imports torch)."""
    root = cache_dir() / f"tokenizers-v{DEMO_VERSION}"
    if all((root / name / "vocab.json").exists() for name in DEMO_TOKENIZERS):
        return root
    from cml.errors import StageFailed
    from cml.runner import indented

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent.parent), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "cml.sd_process.demo_model", "tokenizers", str(root), *(f"{n}={pad}" for n, pad in DEMO_TOKENIZERS.items())]
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise StageFailed(f"writing the demo tokenizers failed (exit code {p.returncode})\n{indented((p.stdout + p.stderr).splitlines())}")
    return root


def demo_image(size: int = 256) -> Image.Image:
    """A colourful, deterministic image A: gradients and shapes, so grayscale visibly changes it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([x, y, 1.0 - 0.5 * (x + y)], axis=-1) * 255
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    s = size
    d.ellipse([s * 0.15, s * 0.15, s * 0.55, s * 0.55], fill=(230, 40, 40))
    d.rectangle([s * 0.5, s * 0.55, s * 0.9, s * 0.85], fill=(30, 200, 60))
    d.polygon([(s * 0.2, s * 0.9), (s * 0.45, s * 0.6), (s * 0.6, s * 0.95)], fill=(250, 220, 0))
    return img


# The demo's check size (the demo preset's 64 px): A's VAE round trip at it is made with the model (see below).
DEMO_CHECK_SIZE = 64


def _cached_build(name: str, builder: str, what: str, sd_scripts: Path, log, roundtrip_of: Path | None = None) -> Path:
    """Build a demo checkpoint once into the cache, in a child process (torch stays out of cml's process);
    written under a temporary name, then renamed.

    roundtrip_of: an image whose VAE round trip (cml/sd_process/vae_roundtrip.py, at DEMO_CHECK_SIZE) the same child
    makes from the saved file and puts in the check's cache: the demo's first check then starts one process less."""
    from cml.cache import VAE_ROUNDTRIP
    from cml.errors import StageFailed
    from cml.model_files import file_sha256
    from cml.report.generate import roundtrip_key
    from cml.runner import indented
    from cml.sdscripts import SdScripts, python_env

    out = cache_dir() / f"{name}-v{DEMO_VERSION}.safetensors"
    if out.exists():
        return out
    log(f"building {what} (once): {out}")
    env = python_env(SdScripts(sd_scripts, None, "demo"))
    with atomic_path(out) as tmp:
        rt = tmp.with_suffix(".roundtrip.png")
        argv = [sys.executable, "-m", "cml.sd_process.demo_model", builder, str(tmp)]
        if roundtrip_of is not None:
            argv += [str(roundtrip_of), str(DEMO_CHECK_SIZE), str(rt)]
        p = subprocess.run(argv, cwd=sd_scripts, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not tmp.exists():
            rt.unlink(missing_ok=True)
            tail = indented((p.stdout + p.stderr).splitlines())
            raise StageFailed(f"building the demo model failed (exit code {p.returncode})\n{tail}")
    if roundtrip_of is not None and rt.is_file():
        from PIL import Image

        VAE_ROUNDTRIP.store(roundtrip_key("sha256:" + file_sha256(out), Image.open(roundtrip_of), DEMO_CHECK_SIZE), rt)
        rt.unlink()
    return out


def demo_sd15_checkpoint(sd_scripts: Path, log=print) -> Path:
    """The SD1.5-architecture demo model (2.1 GB fp16): see cml/sd_process/demo_model.py for what it is and why."""
    return _cached_build("demo-sd15", "sd15", "the SD1.5-architecture demo model (~30 s, 2.1 GB)", sd_scripts, log, roundtrip_of=demo_a())


def demo_a() -> Path:
    """Image A of the demo, cached beside the demo model."""
    a = cache_dir() / "demo-a.png"
    if not a.exists():
        with atomic_path(a) as tmp:
            demo_image().save(tmp)
    return a


def prepare_demo(sd_option: str | None = None, world: bool = False) -> tuple[Path, dict[str, Path | list[Path]]]:
    """The shipped demo preset (or, ``world``, the world demo's), and the typed overrides that point it at the cached
    demo model (or world model, cml/demo/world.py), tokenizer and A.

    The demo model's build (a child process), the device probe (a child process importing torch, its answer
    cached for the run) and the tokenizer (a child, once) run side by side: on a 2-core machine the build's imports
    and random draws leave a core free."""
    from concurrent.futures import ThreadPoolExecutor

    from cml.device import cached_probe
    from cml.preset import shipped_presets
    from cml.sdscripts import locate

    sd = locate(sd_option)
    a = demo_a()
    with ThreadPoolExecutor(2) as pool:
        model = pool.submit(demo_sd15_checkpoint, sd.path)
        probed = pool.submit(cached_probe)
        tokenizers = tokenizer_dir()
        probed.result()
        base = model.result()
    if world:
        from cml.demo.world import world_model

        return shipped_presets()["demo-world"], {"base_model": world_model(sd.path, base, tokenizers), "source": [a], "tokenizer_cache_dir": tokenizers}
    return shipped_presets()["demo"], {"base_model": base, "source": [a], "tokenizer_cache_dir": tokenizers}


def random_sdxl_checkpoint(sd_scripts: Path, log=print) -> Path:
    """A randomly initialised SDXL-architecture checkpoint, fp16 (6.9 GB; ~1 min, ~15 GB peak RAM)."""
    return _cached_build("random-sdxl", "sdxl", "a random SDXL-architecture checkpoint (~1 min, 6.9 GB, ~15 GB RAM)", sd_scripts, log)


def random_sd2v_checkpoint(sd_scripts: Path, log=print) -> Path:
    """A randomly initialised SD2-architecture v-prediction checkpoint, fp16 (2.6 GB; ~30 s)."""
    return _cached_build("random-sd2v", "sd2v", "a random SD2-architecture v-prediction checkpoint (~30 s, 2.6 GB)", sd_scripts, log)


TOY_VERSIONS = {"flux": 1, "flux-schnell": 1, "flux-full": 1, "sd3": 1, "anima": 2}  # bump a toy's when cml/sd_process/toy_models.py changes it


def toy_model(kind: str, sd_scripts: Path, log=print) -> Path:
    """A folder of toy model files of a DiT family (cml/sd_process/toy_models.py: flux, flux-schnell, sd3, anima),
    built once into the cache in a child process, for the tests."""
    from cml.errors import StageFailed
    from cml.runner import indented
    from cml.sdscripts import SdScripts, python_env

    out = cache_dir() / f"toy-{kind}-v{TOY_VERSIONS[kind]}"
    if out.is_dir():
        return out
    log(f"building the {kind} toy model files (once): {out}")
    part = out.with_name(out.name + ".part")
    if part.exists():
        import shutil

        shutil.rmtree(part)
    env = python_env(SdScripts(sd_scripts, None, "toy"))
    p = subprocess.run([sys.executable, "-m", "cml.sd_process.toy_models", kind, str(part)], cwd=sd_scripts, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise StageFailed(f"building the {kind} toy failed (exit code {p.returncode})\n{indented((p.stdout + p.stderr).splitlines())}")
    part.rename(out)
    return out


def toy_tokenizers(sd_scripts: Path) -> Path:
    """The demo's CLIP tokenizers and a T5 tokenizer (sd-scripts' own configs/t5_old, under the hub id sd-scripts
    looks for): a tokenizer_cache_dir for FLUX.1 and SD3 offline."""
    import shutil

    root = cache_dir() / f"toy-tokenizers-v{DEMO_VERSION}"
    if not (root / "google_t5-v1_1-xxl" / "tokenizer.json").is_file():
        part = root.with_name(root.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(tokenizer_dir(), part)
        shutil.copytree(sd_scripts / "configs" / "t5_old", part / "google_t5-v1_1-xxl")
        shutil.rmtree(root, ignore_errors=True)
        part.rename(root)
    return root
