"""`cml check`: see and measure the result with sd-scripts' own generator (gen_img.py / sdxl_gen_img.py).

- copy check: base model + copy LoRA, empty prompt, several seeds: does it give back A?
- sweep: each diff LoRA at several weights on one or more models, several seeds and prompts;
- metrics: an effect measure per transform and a content measure (luminance SSIM against weight 0);
- loss curves of every training stage; report.md linking it all.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cml.errors import StageFailed
from cml.kohya.render import NETWORK_MODULE, SCRIPTS, default_tokenizer_cache
from cml.plan import Plan, Role
from cml.report.figures import grid, loss_plot
from cml.report.metrics import EFFECTS, luminance_ssim, rgb_ssim
from cml.runner import indented, run_logged
from cml.sdscripts import SdScripts, python_env

# gen_img.py strips a prompt line before splitting off its " --" options, so an empty prompt followed by
# options would swallow the first option as prompt text. "()" is an empty emphasis group: sd-scripts'
# prompt parser turns it into exactly the empty prompt.
EMPTY_PROMPT = "()"


@dataclass
class Job:
    prompt: str
    seed: int
    weight: float  # of the last LoRA; LoRAs before it (the copy LoRA, for a copy machine made in memory) at 1


@dataclass(frozen=True)
class SweepModel:
    """A model of the weight sweep: a checkpoint, and the LoRAs applied at weight 1 that make it what it is."""

    label: str
    model: Path
    fixed: tuple[Path, ...] = ()


def prompt_line(job: Job, fixed: int = 0) -> str:
    muls = ",".join(["1.0"] * fixed + [f"{job.weight}"])
    return f"{job.prompt.strip() or EMPTY_PROMPT} --d {job.seed} --am {muls}"


def gen_argv(plan: Plan, model: Path, loras: list[Path], prompt_file: Path, outdir: Path) -> list[str]:
    c = plan.preset.check
    size = c.resolution or plan.preset.train.resolution
    fam = plan.inputs.family
    argv = [
        sys.executable,
        SCRIPTS[fam]["gen"],
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
        "--network_module",
        *[NETWORK_MODULE] * len(loras),
        "--network_weights",
        *map(str, loras),
        "--network_mul",
        *["1.0"] * len(loras),
        "--tokenizer_cache_dir",
        str(plan.preset.tokenizer_cache_dir or default_tokenizer_cache()),
    ]
    if fam == "sd2":
        argv.append("--v2")
    if plan.inputs.v_parameterization and fam != "sdxl":
        argv.append("--v_parameterization")
    if plan.inputs.device == "cuda":
        argv.append("--fp16")
    return argv


def generate(plan: Plan, sd: SdScripts, name: str, model: Path, loras: list[Path], jobs: list[Job], mode: str) -> list[Image.Image]:
    """One gen_img run for a list of jobs (one model load); images in job order. The last LoRA is at each
    job's weight, the others at 1."""
    work = plan.run_dir / "check" / "gen" / name
    if work.exists():
        for old in work.glob("im_*.png"):
            old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(prompt_line(j, len(loras) - 1) for j in jobs) + "\n", encoding="utf-8")
    res = run_logged(gen_argv(plan, model, loras, prompts, work), sd.path, python_env(sd), work / "log.txt", mode)
    if res.returncode != 0:
        tail = indented(res.tail)
        raise StageFailed(f"check: {SCRIPTS[plan.inputs.family]['gen']} exited with code {res.returncode}\n{tail}\n  full log: {work / 'log.txt'}")
    files = sorted(work.glob("im_*.png"))
    if len(files) != len(jobs):
        raise StageFailed(f"check: expected {len(jobs)} images from the generator, found {len(files)}", fix=f"see {work / 'log.txt'}")
    return [Image.open(f).convert("RGB") for f in files]


def vae_roundtrip(plan: Plan, sd: SdScripts, size: int, mode: str) -> Path:
    """Image A as the base model's VAE gives it back (cml/kohya/vae_roundtrip.py): the copy check's reference."""
    out = plan.run_dir / "check"
    a_path, rt_path = out / "a.png", out / "a_vae_roundtrip.png"
    plan.inputs.source[0].image.convert("RGB").save(a_path)
    argv = [sys.executable, "-m", "cml.kohya.vae_roundtrip", str(plan.preset.base_model), str(a_path), str(size), str(rt_path)]
    res = run_logged(argv, sd.path, python_env(sd), out / "vae_roundtrip.log", mode)
    if res.returncode != 0 or not rt_path.is_file():
        tail = indented(res.tail)
        raise StageFailed(f"check: A's VAE round trip failed (exit code {res.returncode})\n{tail}\n  full log: {out / 'vae_roundtrip.log'}")
    return rt_path


def copy_check(plan: Plan, sd: SdScripts, mode: str) -> dict:
    """Base model with and without the copy LoRA, empty prompt, every seed: SSIM to A as the VAE returns it."""
    seeds = plan.preset.check.seeds
    copy = plan.stage("copy")
    jobs = [Job("", s, w) for w in (0.0, 1.0) for s in seeds]  # by weight: gen_img batches only equal weights
    imgs = generate(plan, sd, "copy", plan.preset.base_model, [copy.output], jobs, mode)
    ref_path = vae_roundtrip(plan, sd, imgs[0].width, mode)
    ref = Image.open(ref_path).convert("RGB")
    a = plan.inputs.source[0].image
    rows, scores = [], []
    for i, s in enumerate(seeds):
        base_img, copy_img = imgs[i], imgs[len(seeds) + i]
        sc = {"seed": s, "ssim_copy_lora": rgb_ssim(copy_img, ref), "ssim_base": rgb_ssim(base_img, ref)}
        scores.append(sc)
        rows.append([a.convert("RGB").resize(copy_img.size, Image.Resampling.LANCZOS), ref, base_img, copy_img])
    labels = [f"seed {s['seed']}\nSSIM to A (VAE)\nbase {s['ssim_base']:.3f}\ncopy {s['ssim_copy_lora']:.3f}" for s in scores]
    path = plan.run_dir / "check" / "copy_check.png"
    grid(rows, labels, ["A", "A (VAE)", "base", "+ copy LoRA"], "copy check").save(path)
    return {"image": str(path), "reference": str(ref_path), "seeds": scores}


def sweep_models(plan: Plan) -> list[SweepModel]:
    """The copy machine model (if the check asks for it), then check.models or the base model."""
    out = []
    if plan.preset.check.copy_machine:
        if plan.preset.merge == "checkpoint":
            out.append(SweepModel("copy_machine", plan.stage("merge").output))
        else:  # in memory: the base with the copy LoRA at weight 1 is what the diff stages trained against
            out.append(SweepModel("copy_machine", plan.preset.base_model, (plan.stage("copy").output,)))
    out += [SweepModel(m.stem, m) for m in plan.preset.check.models or [plan.preset.base_model]]
    return out


def sweep(plan: Plan, sd: SdScripts, target: str, on: SweepModel, mode: str) -> tuple[Path, dict]:
    c = plan.preset.check
    diff = plan.stage(f"diff-{target}")
    rows_def = [(p, s) for p in c.prompts for s in c.seeds]
    jobs = [Job(p, s, w) for w in c.weights for p, s in rows_def]  # by weight: gen_img batches only equal weights
    imgs = generate(plan, sd, f"sweep-{target}-{on.label}", on.model, [*on.fixed, diff.output], jobs, mode)
    n = len(rows_def)
    cells = [[imgs[col * n + r] for col in range(len(c.weights))] for r in range(n)]
    labels = [f"{p or '(empty prompt)'}\nseed {s}" for p, s in rows_def]
    path = plan.run_dir / "check" / f"sweep-{target}-{on.label}.png"
    grid(cells, labels, [f"w={w:+g}" for w in c.weights], f"on {on.label.replace('_', ' ')}").save(path)
    transform = plan.preset.targets[target].transform
    effect_name, effect = EFFECTS[transform]
    zero = c.weights.index(0.0)
    per_weight = {}
    for col, w in enumerate(c.weights):
        eff, ssim = [], []
        for row in cells:
            eff.append(effect(row[col], row[zero]))
            ssim.append(luminance_ssim(row[col], row[zero]))
        per_weight[f"{w:g}"] = {effect_name: sum(eff) / len(eff), "luminance_ssim_vs_0": sum(ssim) / len(ssim)}
    return path, per_weight


def run_check(plan: Plan, sd: SdScripts, mode: str = "normal") -> dict:
    out = plan.run_dir / "check"
    out.mkdir(parents=True, exist_ok=True)
    needed = [s.output for s in plan.stages if s.role in (Role.COPY, Role.DIFF)]
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise StageFailed(f"check: run the pipeline first; missing {missing[0]}", fix=f"cml run {plan.run_dir / 'preset.toml'}")
    result: dict[str, Any] = {"settings": plan.preset.check.model_dump(mode="json"), "copy_check": copy_check(plan, sd, mode), "targets": {}, "grids": []}
    for t in plan.preset.targets:
        result["targets"][t] = {}
        for on in sweep_models(plan):
            path, per_weight = sweep(plan, sd, t, on, mode)
            result["targets"][t][on.label] = per_weight
            result["grids"].append(str(path))
    curves = {}
    for st in plan.stages:
        rec = st.record_path
        if st.kind == "train" and rec.exists():
            curves[st.name] = json.loads(rec.read_text()).get("losses", [])
    result["loss_plot"] = str(out / "losses.png")
    loss_plot(curves, out / "losses.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    write_report(plan, result)
    return result


def write_report(plan: Plan, r: dict) -> Path:
    rel = lambda p: Path(p).relative_to(plan.run_dir).as_posix()  # noqa: E731
    c = r["settings"]
    lines = [f"# {plan.preset.name}: check", ""]
    run_json = plan.run_dir / "run.json"
    mc = json.loads(run_json.read_text()).get("method_check", {}) if run_json.exists() else {}
    if mc:
        lines += ["## Method check (early diff-stage loss)", "", "| target | against the copy machine model | against the plain base |", "|---|---|---|"]
        for t, m in mc.items():
            fmt = lambda v: f"{v:.4f}" if v is not None else "not measured (set baseline = true)"  # noqa: E731
            lines.append(f"| {t} | {fmt(m.get('against_copy_machine'))} | {fmt(m.get('against_base'))} |")
        lines.append("")
    lines += [
        "## Copy check",
        "",
        "Base model + copy LoRA at weight 1, empty prompt: it should give back image A whatever the seed. "
        "SSIM is measured against A as the base model's VAE returns it (encoded, then decoded): no model can draw A better.",
        "",
        f"![copy check]({rel(r['copy_check']['image'])})",
        "",
        "| seed | SSIM to A (VAE), base | SSIM to A (VAE), base + copy LoRA |",
        "|---|---|---|",
    ]
    for s in r["copy_check"]["seeds"]:
        lines.append(f"| {s['seed']} | {s['ssim_base']:.3f} | {s['ssim_copy_lora']:.3f} |")
    lines += [
        "",
        "## Weight sweeps",
        "",
        "Each diff LoRA at every weight, same seeds and prompts; on the copy machine model the change A -> B shows cleanest.",
        "",
    ]
    for g in r["grids"]:
        lines += [f"![{Path(g).stem}]({rel(g)})", ""]
    lines += ["## Metrics", ""]
    for t, per_model in r["targets"].items():
        for m, per_weight in per_model.items():
            keys = list(next(iter(per_weight.values())))
            ratio = "mean_saturation" in keys and per_weight["0"]["mean_saturation"] > 0  # grayscale: x of weight 0's
            head = keys + (["saturation vs weight 0"] if ratio else [])
            lines += [f"### {t} on {m.replace('_', ' ')}", "", "| weight | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
            for w, vals in per_weight.items():
                cells = [f"{vals[k]:.4f}" for k in keys]
                if ratio:
                    cells.append(f"{vals['mean_saturation'] / per_weight['0']['mean_saturation']:.2f}x")
                lines.append(f"| {w} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "## Training loss",
        "",
        f"![loss curves]({rel(r['loss_plot'])})",
        "",
        "## Settings",
        "",
        f"Seeds {c['seeds']}, weights {c['weights']}, {c['sampling_steps']} sampling steps ({c['sampler']}), prompts {c['prompts']}. "
        "Same seeds and settings give the same images.",
        "",
    ]
    path = plan.run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    for t, per_model in result["targets"].items():
        for m, per_weight in per_model.items():
            keys = list(next(iter(per_weight.values())))
            table = Table(title=f"{t} on {m}")
            table.add_column("weight")
            for k in keys:
                table.add_column(k)
            for w, vals in per_weight.items():
                table.add_row(w, *(f"{vals[k]:.4f}" for k in keys))
            console.print(table)
