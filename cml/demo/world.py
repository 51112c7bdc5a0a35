"""The world model: the demo model taught to draw several things, one word each, so that a difference LoRA can be
judged on content other than A (`cml demo --world`, the full test tier).

The scenes are drawn in code (flat shapes on gradients, 64 px), each with a one-word caption. A LoRA is trained on all
of them with sd-scripts' own trainer (cml's, with its exact speed-ups) on the demo model, and merged into it with
sd-scripts' merge_lora.py: the *world base*, which draws each scene for its word. Built once and cached by content
(the scenes' pixels, the recipe, the demo model's sha256), like the demo model.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tomli_w
from PIL import Image, ImageDraw

from cml.files import atomic_path

SIZE = 64
WORLD_VERSION = "1"
# The world LoRA's recipe (docs/measurements.md: 6-13 minutes on a 2-core CPU): each scene drawn for its word at
# seeds 1-6 when looked at with guidance (LOOK); six scenes at this budget gave one blend whatever the word.
RECIPE = {"dim": 32, "steps": 150, "batch": 3, "learning_rate": 3e-3}


# How the world is looked at: the world demo check's sampler, steps and guidance (presets/demo-world.toml; a unit test
# holds them equal). With guidance 1 (no unconditional pass) the world's images drift to the blend of its scenes,
# and moon, the one dark scene, was nearest its own scene at some seeds only; with guidance 3 and euler_a each word at
# every one of seeds 1-6 (docs/measurements.md, "The world demo"); at 6 the colours clip.
class Look(NamedTuple):
    sampler: str
    steps: int
    scale: float


LOOK = Look(sampler="euler_a", steps=8, scale=3.0)


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    t = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    rgb = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return Image.fromarray(np.repeat(rgb, SIZE, axis=1).clip(0, 255).astype(np.uint8), "RGB")


def scene(word: str) -> Image.Image:
    """One scene: a coloured gradient background and one large, flat, coloured shape, each scene its own layout."""
    s = SIZE
    if word == "kite":
        img = _gradient((90, 160, 240), (200, 230, 255))
        d = ImageDraw.Draw(img)
        d.polygon([(s * 0.5, s * 0.1), (s * 0.8, s * 0.4), (s * 0.5, s * 0.75), (s * 0.2, s * 0.4)], fill=(230, 30, 60))
        d.line([(s * 0.5, s * 0.75), (s * 0.35, s * 0.98)], fill=(60, 40, 20), width=2)
    elif word == "moon":
        img = _gradient((10, 10, 50), (40, 20, 90))
        d = ImageDraw.Draw(img)
        d.ellipse([s * 0.45, s * 0.1, s * 0.9, s * 0.55], fill=(250, 240, 150))
        d.ellipse([s * 0.35, s * 0.05, s * 0.75, s * 0.45], fill=(20, 15, 60))
    elif word == "tree":
        img = _gradient((150, 210, 255), (120, 200, 90))
        d = ImageDraw.Draw(img)
        d.rectangle([s * 0.44, s * 0.55, s * 0.56, s * 0.95], fill=(110, 60, 20))
        d.ellipse([s * 0.2, s * 0.1, s * 0.8, s * 0.65], fill=(30, 140, 40))
    elif word == "boat":
        img = _gradient((170, 210, 250), (20, 80, 170))
        d = ImageDraw.Draw(img)
        d.polygon([(s * 0.15, s * 0.65), (s * 0.85, s * 0.65), (s * 0.7, s * 0.82), (s * 0.3, s * 0.82)], fill=(120, 50, 20))
        d.polygon([(s * 0.5, s * 0.15), (s * 0.5, s * 0.62), (s * 0.78, s * 0.62)], fill=(245, 245, 235))
    elif word == "fish":
        img = _gradient((0, 120, 150), (0, 40, 90))
        d = ImageDraw.Draw(img)
        d.ellipse([s * 0.2, s * 0.35, s * 0.7, s * 0.65], fill=(250, 140, 0))
        d.polygon([(s * 0.68, s * 0.5), (s * 0.9, s * 0.3), (s * 0.9, s * 0.7)], fill=(250, 90, 0))
    elif word == "house":
        img = _gradient((200, 220, 250), (100, 170, 80))
        d = ImageDraw.Draw(img)
        d.rectangle([s * 0.25, s * 0.45, s * 0.75, s * 0.9], fill=(220, 200, 120))
        d.polygon([(s * 0.18, s * 0.47), (s * 0.5, s * 0.15), (s * 0.82, s * 0.47)], fill=(170, 30, 30))
        d.rectangle([s * 0.44, s * 0.65, s * 0.56, s * 0.9], fill=(80, 50, 20))
    else:
        raise KeyError(word)
    return img


# The scenes scene() draws; the world is taught WORDS. Six scenes at the build's budget gave one blend whatever the
# word, three each its own (docs/measurements.md): the other three stay for a world that knows more.
SCENES = ("kite", "moon", "tree", "boat", "fish", "house")
WORDS = ("moon", "tree", "boat")


def world_key(demo_sha256: str) -> str:
    import hashlib

    from cml.images import pixel_sha256

    parts = [WORLD_VERSION, demo_sha256, json.dumps(RECIPE, sort_keys=True), *(f"{w}:{pixel_sha256(scene(w))}" for w in WORDS)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def write_world_training(work: Path, demo_model: Path, tokenizers: Path, steps: int | None = None) -> Path:
    """The world LoRA's training, written into ``work``: the scenes with their words as captions, dataset.toml and
    train.toml (RECIPE; ``steps`` instead of RECIPE's for a shorter run). Returns train.toml's path."""
    (work / "images").mkdir(parents=True)
    for w in WORDS:
        scene(w).save(work / "images" / f"{w}.png")
        (work / "images" / f"{w}.txt").write_text(w)
    (work / "dataset.toml").write_text(
        tomli_w.dumps(
            {
                "general": {
                    "resolution": SIZE,
                    "batch_size": RECIPE["batch"],
                    "enable_bucket": True,
                    "bucket_no_upscale": True,
                    "min_bucket_reso": SIZE,
                    "max_bucket_reso": 1024,
                    "caption_extension": ".txt",
                },
                "datasets": [{"subsets": [{"image_dir": str(work / "images"), "num_repeats": 1}]}],
            }
        )
    )
    train = {
        "pretrained_model_name_or_path": str(demo_model),
        "dataset_config": str(work / "dataset.toml"),
        "output_dir": str(work),
        "output_name": "world",
        "save_model_as": "safetensors",
        "save_precision": "fp16",
        "network_module": "cml.sd_process.lora",
        "network_dim": RECIPE["dim"],
        "network_alpha": float(RECIPE["dim"]),
        "network_train_unet_only": True,
        "optimizer_type": "AdamW",
        "learning_rate": RECIPE["learning_rate"],
        "lr_scheduler": "cosine",
        "max_train_steps": steps or RECIPE["steps"],
        "seed": 42,
        "mixed_precision": "no",
        "cache_latents": True,
        "sdpa": True,
        "max_data_loader_n_workers": 0,
        "tokenizer_cache_dir": str(tokenizers),
    }
    (work / "train.toml").write_text(tomli_w.dumps(train))
    return work / "train.toml"


def world_model(sd_scripts: Path, demo_model: Path, tokenizers: Path, log=print) -> Path:
    """The world base (cached): the demo model with the world LoRA merged in."""
    from cml.demo import cache_dir
    from cml.errors import StageFailed
    from cml.model_files import file_sha256
    from cml.runner import indented, run_logged
    from cml.sdscripts import SdScripts, python_env

    key = world_key(file_sha256(demo_model))
    out = cache_dir() / f"world-{key}.safetensors"
    if out.is_file():
        return out
    started = time.monotonic()
    work = cache_dir() / f"world-{key}.part"
    shutil.rmtree(work, ignore_errors=True)
    write_world_training(work, demo_model, tokenizers)
    sd = SdScripts(sd_scripts, None, "world")
    log(f"building the world model (once): a LoRA of {len(WORDS)} scenes on the demo model, {RECIPE['steps']} steps, merged into it")
    steps = [
        [sys.executable, "-m", "cml.sd_process.train", "train_network", "--config_file", str(work / "train.toml")],
        [sys.executable, "networks/merge_lora.py", "--sd_model", str(demo_model), "--models", str(work / "world.safetensors")]
        + ["--ratios", "1.0", "--save_to", str(work / "world-base.safetensors"), "--precision", "float", "--save_precision", "fp16"],
    ]
    phases: dict[str, float] = {}
    for name, argv in zip(("train", "merge"), steps):
        t0 = time.monotonic()
        res = run_logged(argv, sd_scripts, python_env(sd), work / "log.txt")
        if res.returncode != 0:
            raise StageFailed(f"building the world model failed (exit code {res.returncode})\n{indented(res.tail)}\n  full log: {work / 'log.txt'}")
        phases[name] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    distances = scene_distances(sd_scripts, work / "world-base.safetensors", tokenizers, work)
    phases["look"] = round(time.monotonic() - t0, 1)
    seen = recognised(distances)
    log("the world base draws each word nearest its own scene at seeds: " + ", ".join(f"{w} {seen[w] or 'none'}" for w in WORDS))
    facts = {
        "recipe": RECIPE,
        "looked_at": LOOK._asdict(),
        "pixel_rmse_to_scene": distances,
        "recognised_at_seeds": seen,
        "build_seconds": round(time.monotonic() - started),
        "phase_seconds": phases,
    }
    out.with_suffix(".json").write_text(json.dumps(facts, indent=1))
    with atomic_path(out) as tmp:
        (work / "world-base.safetensors").replace(tmp)
    shutil.rmtree(work, ignore_errors=True)
    return out


def scene_distances(
    sd_scripts: Path,
    model: Path,
    tokenizers: Path,
    work: Path,
    seeds: tuple[int, ...] = (1, 2),
    sampler: str = LOOK.sampler,
    steps: int = LOOK.steps,
    batch: int = 4,
    scale: float = LOOK.scale,
) -> dict[str, dict[int, dict[str, float]]]:
    """What the world base draws for each word: word -> seed -> scene -> pixel RMSE (0-255) of gen_img.py's image (the
    world demo check's sampler, steps and guidance: LOOK) to the scene drawn in code. The scenes are flat colours on gradients and the
    world's images soft blobs, so colour and layout tell them apart, luminance structure does not (measured:
    docs/measurements.md). Recognisable at a seed: the image is nearest its own word's scene."""
    from cml.errors import StageFailed
    from cml.runner import indented, run_logged
    from cml.sdscripts import SdScripts, python_env

    out = work / "gen"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(w, s) for w in WORDS for s in seeds]
    (work / "prompts.txt").write_text("".join(f"{w} --d {s}\n" for w, s in jobs))
    argv = [sys.executable, "-m", "cml.sd_process.gen", "gen_img", "--ckpt", str(model), "--outdir", str(out), "--from_file", str(work / "prompts.txt")]
    argv += ["--W", str(SIZE), "--H", str(SIZE), "--steps", str(steps), "--sampler", sampler, "--scale", str(scale), "--images_per_prompt", "1"]
    argv += ["--sequential_file_name", "--sdpa", "--tokenizer_cache_dir", str(tokenizers), "--batch_size", str(batch)]
    sd = SdScripts(sd_scripts, None, "world")
    res = run_logged(argv, sd_scripts, python_env(sd), work / "gen.log")
    files = sorted(out.glob("im_*.png"))
    if res.returncode != 0 or len(files) != len(jobs):
        raise StageFailed(f"drawing the world's scenes failed (exit code {res.returncode})\n{indented(res.tail)}")
    refs = {v: np.asarray(scene(v), np.float32) for v in WORDS}
    found: dict[str, dict[int, dict[str, float]]] = {w: {} for w in WORDS}
    for (w, seed), f in zip(jobs, files):
        img = np.asarray(Image.open(f).convert("RGB"), np.float32)
        found[w][seed] = {v: float(np.sqrt(((img - ref) ** 2).mean())) for v, ref in refs.items()}
    return found


def recognised(distances: dict[str, dict[int, dict[str, float]]]) -> dict[str, list[int]]:
    """word -> the seeds at which its image is nearest its own scene (see scene_distances)."""
    return {w: [s for s, d in per.items() if min(d, key=d.__getitem__) == w] for w, per in distances.items()}
