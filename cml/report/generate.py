"""Images from sd-scripts' own generator (gen_img.py / sdxl_gen_img.py), and A as the model's VAE returns it.

One generator run per model file: every image the check needs of that model (copy check, sweeps of every
target) is one prompt line, with the multiplier of each LoRA loaded into that run; lines are ordered so that
gen_img batches those with equal multipliers.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cml.cache import VAE_ROUNDTRIP, tokenizers_dir
from cml.errors import StageFailed
from cml.families import family
from cml.images import pixel_sha256
from cml.model_files import model_identity
from cml.plan import Plan, Role
from cml.render.scripts import NETWORK_MODULE, gen_command
from cml.runner import indented, run_logged
from cml.safetensors_file import write_reshaped
from cml.sdscripts import SdScripts, python_env

# gen_img.py strips a prompt line before splitting off its " --" options, so an empty prompt followed by
# options would swallow the first option as prompt text. "()" is an empty emphasis group: sd-scripts'
# prompt parser turns it into exactly the empty prompt.
EMPTY_PROMPT = "()"


@dataclass(frozen=True)
class Job:
    """One image: a prompt, a seed, and the multiplier of each LoRA of the run (in the run's order)."""

    prompt: str
    seed: int
    muls: tuple[float, ...]


def gen_img_number(m: float) -> str:
    """A weight as gen_img.py's "--am" reads it ("[\\d.\\-,]+": no exponent, so 1e-05 would be read as 1):
    fixed-point, at most 6 decimals (check.weights allows no more)."""
    text = f"{m:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def prompt_line(job: Job) -> str:
    muls = ",".join(gen_img_number(m) for m in job.muls)
    return f"{job.prompt.strip() or EMPTY_PROMPT} --d {job.seed} --am {muls}"


def gen_argv(plan: Plan, model: Path, loras: list[Path], prompt_file: Path, outdir: Path) -> list[str]:
    c = plan.preset.check
    size = c.resolution or plan.preset.train.resolution
    fam = plan.inputs.family
    argv = [
        *gen_command(plan),
        "--ckpt",
        str(model),
        "--outdir",
        str(outdir),
        "--from_file",
        str(prompt_file),
        "--W",
        str(size),
        "--H",
        str(size),
        "--steps",
        str(c.sampling_steps),
        "--sampler",
        c.sampler,
        "--batch_size",
        str(c.batch_size),
        "--scale",
        str(c.guidance_scale),
        "--images_per_prompt",
        "1",
        "--sequential_file_name",
        "--sdpa",
        "--tokenizer_cache_dir",
        str(plan.preset.tokenizer_cache_dir or tokenizers_dir()),
    ]
    if loras:
        argv += ["--network_module", *[NETWORK_MODULE] * len(loras), "--network_weights", *map(str, loras), "--network_mul", *["1.0"] * len(loras)]
    if fam == "sd2":
        argv.append("--v2")
    if plan.inputs.v_parameterization and fam != "sdxl":
        argv.append("--v_parameterization")
    if plan.inputs.device == "cuda":
        argv.append("--fp16")
    return argv


# sd-scripts trains SD2 with 1x1 convolutions where SD2 has linear projections (train_util.load_target_model passes
# unet_use_linear_projection_in_v2=False), so an SD2 LoRA's proj_in / proj_out weights are [out, in, 1, 1]; gen_img.py
# builds SD2's U-Net with linear projections, as the checkpoint has them, and refuses those weights (size mismatch).
SD2_PROJECTION = re.compile(r"_proj_(in|out)\.lora_(down|up)\.weight$")


def loras_for_generator(plan: Plan, loras: list[Path], work: Path) -> list[Path]:
    """The LoRA files gen_img.py loads: the run's own, or for SD2 copies in ``work`` with the projections' weights as
    [out, in] (the same bytes: the same numbers). The run's files are not changed."""
    if plan.inputs.family != "sd2":
        return loras
    out = []
    for i, p in enumerate(loras):
        dst = work / "loras" / f"{i + 1}-{p.name}"
        write_reshaped(p, dst, lambda name, shape: shape[:2] if SD2_PROJECTION.search(name) and shape[2:] == [1, 1] else None)
        out.append(dst)
    return out


def sample_with_trainer(plan: Plan, sd: SdScripts, work: Path, model: Path, loras: list[Path], order: list[Job], mode: str) -> list[Path]:
    """The images of a DiT family, drawn by its own trainer's sampling (cml/sd_process/sample.py): one process that
    loads ``model`` as the copy stage does and draws every job with ``loras`` at the job's multipliers."""
    import tomli_w

    from cml.render.scripts import CML_TRAINER, trainer
    from cml.render.train_config import managed_options

    c, f = plan.preset.check, family(plan.inputs.family)
    copy = next(s for s in plan.stages if s.role is Role.COPY and not s.reverse)
    size = c.resolution or plan.preset.train.resolution
    files = [work / f"im_{i:05d}.png" for i in range(len(order))]
    jobs = {
        "loras": [str(p) for p in loras],
        "prompt": {"width": size, "height": size, "sample_steps": c.sampling_steps, f.guidance: c.guidance_scale},
        "jobs": [{"prompt": j.prompt, "seed": j.seed, "muls": list(j.muls), "out": str(out)} for j, out in zip(order, files)],
    }
    (work / "jobs.json").write_text(json.dumps(jobs, indent=1), encoding="utf-8")
    options = {k: v for k, v in managed_options(plan, copy).items() if k not in ("base_weights", "base_weights_multiplier")}
    extra = {k: v for k, v in copy.train.extra.items() if not k.startswith(("sample", "save_every"))}
    options |= extra | {"pretrained_model_name_or_path": str(model), "output_dir": str(work / "out"), "output_name": "check"}
    options |= {"logging_dir": str(work / "logs"), "sample_prompts": str(prompts_file(jobs, work)), "sample_at_first": True, "max_train_steps": 1}
    (work / "check.toml").write_text(tomli_w.dumps(options), encoding="utf-8")
    argv = [sys.executable, "-m", CML_TRAINER, trainer(plan), "--cml_sample", str(work / "jobs.json"), "--config_file", str(work / "check.toml")]
    res = run_logged(argv, sd.path, python_env(sd), work / "log.txt", stream=mode == "verbose")
    if res.returncode != 0:
        raise StageFailed(f"check: {trainer(plan)}.py's sampling exited with code {res.returncode}\n{indented(res.tail)}\n  full log: {work / 'log.txt'}")
    return files


def prompts_file(jobs: dict, folder: Path) -> Path:
    """sd-scripts' JSON prompt file of every distinct prompt: the trainer caches their text encoders' outputs."""
    path = folder / "prompts.json"
    distinct = list(dict.fromkeys(j["prompt"] for j in jobs["jobs"]))
    path.write_text(json.dumps([{**jobs["prompt"], "prompt": p} for p in distinct]), encoding="utf-8")
    return path


def generate(plan: Plan, sd: SdScripts, name: str, model: Path, loras: list[Path], jobs: list[Job], mode: str) -> dict[Job, Image.Image]:
    """One generator run on ``model`` with ``loras`` loaded (gen_img.py, or a DiT family's trainer); each job's image."""
    work = plan.run_dir / "check" / "gen" / name
    if work.exists():
        for old in work.glob("im_*.png"):
            old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    order = sorted(set(jobs), key=lambda j: (j.muls, j.prompt, j.seed))  # equal multipliers together: gen_img batches them
    if family(plan.inputs.family).generator == "trainer":
        return {j: Image.open(f).convert("RGB") for j, f in zip(order, sample_with_trainer(plan, sd, work, model, loras, order, mode))}
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(prompt_line(j) for j in order) + "\n", encoding="utf-8")
    argv = gen_argv(plan, model, loras_for_generator(plan, loras, work), prompts, work)
    res = run_logged(argv, sd.path, python_env(sd), work / "log.txt", stream=mode == "verbose")
    if res.returncode != 0:
        tail = indented(res.tail)
        raise StageFailed(f"check: {family(plan.inputs.family).generator}.py exited with code {res.returncode}\n{tail}\n  full log: {work / 'log.txt'}")
    files = sorted(work.glob("im_*.png"))
    if len(files) != len(order):
        raise StageFailed(f"check: expected {len(order)} images from the generator, found {len(files)}", fix=f"see {work / 'log.txt'}")
    return {j: Image.open(f).convert("RGB") for j, f in zip(order, files)}


def roundtrip_key(model_identity: str, a: Image.Image, size: int) -> str:
    """A's VAE round trip is a pure function of the model (its sha256), A's pixels and the size (cml/cache.py's
    VAE_ROUNDTRIP: bump its version when cml/sd_process/vae_roundtrip.py's method changes)."""
    return VAE_ROUNDTRIP.key(model_identity, pixel_sha256(a.convert("RGB")), size)


def a_names(n: int) -> list[str]:
    """The check's file stem for each A: a, then a-2, a-3, ... for a multi-image source."""
    return ["a" if i == 0 else f"a-{i + 1}" for i in range(n)]


def vae_roundtrip(plan: Plan, sd: SdScripts, size: int, mode: str) -> list[Path]:
    """Each A as the base model's VAE gives it back (cml/sd_process/vae_roundtrip.py): the copy check's and the
    leakage measure's references, one per source image. Kept in cml's cache: a re-check, or a run on the same model
    and A, reads them back; the ones not cached are made in one process."""
    out = plan.run_dir / "check"
    made: list[Path] = []
    todo: list[tuple[str, Path, Path]] = []
    for name, src in zip(a_names(len(plan.inputs.source)), plan.inputs.source):
        a_path, rt_path = out / f"{name}.png", out / f"{name}_vae_roundtrip.png"
        src.image.convert("RGB").save(a_path)
        key = roundtrip_key(model_identity(plan.inputs.model), src.image, size)
        cached = VAE_ROUNDTRIP.path(key)
        if cached.is_file():
            shutil.copyfile(cached, rt_path)
        else:
            rt_path.unlink(missing_ok=True)  # a round trip left by an earlier check is not this one's
            todo.append((key, a_path, rt_path))
        made.append(rt_path)
    if todo:
        argv = [sys.executable, "-m", "cml.sd_process.vae_roundtrip", str(plan.preset.base_model), str(todo[0][1]), str(size), str(todo[0][2])]
        argv += [str(p) for _, a_path, rt_path in todo[1:] for p in (a_path, rt_path)]
        res = run_logged(argv, sd.path, python_env(sd), out / "vae_roundtrip.log", stream=mode == "verbose")
        if res.returncode != 0 or not all(rt.is_file() for _, _, rt in todo):
            tail = indented(res.tail)
            raise StageFailed(f"check: A's VAE round trip failed (exit code {res.returncode})\n{tail}\n  full log: {out / 'vae_roundtrip.log'}")
        for key, _, rt_path in todo:
            VAE_ROUNDTRIP.store(key, rt_path)
    return made
