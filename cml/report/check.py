"""`cml check`: see and measure the result with sd-scripts' own generator (cml/report/generate.py).

- copy check: base model + copy LoRA, empty prompt, several seeds: does it give back A?
- sweep: each diff LoRA at several weights on the copy machine model and on the base (or ``check.models``),
  several seeds and prompts;
- metrics: an effect measure per transform and a content measure (luminance SSIM against weight 0);
- loss curves of every training stage; report.md linking it all (cml/report/markdown.py).

The check measures the LoRAs as they were trained: it refuses when a LoRA's record says it was made from other
settings than the run folder's preset.toml now holds (a later `cml plan` may have rewritten it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from PIL import Image

from cml.errors import InputError
from cml.families import family
from cml.plan import Plan, Role, Stage
from cml.records import CheckMetrics, StageRecord, read
from cml.report.figures import grid, loss_plot
from cml.report.generate import Job, a_names, generate, vae_roundtrip
from cml.report.markdown import write_report
from cml.report.metrics import EFFECTS, luminance_ssim, rgb_ssim
from cml.sdscripts import SdScripts

COPY_MACHINE, BASE = "copy_machine", "base"


@dataclass(frozen=True)
class SweepModel:
    """A model of the weight sweep: a file, the LoRAs at weight 1 that make it what it is, and a unique label."""

    label: str
    model: Path
    fixed: tuple[Path, ...] = ()

    def describe(self) -> str:
        return str(self.model) + "".join(f" + {p.name} at weight 1" for p in self.fixed)


def labels_for(paths: list[Path]) -> list[str]:
    """A unique, file-name-safe label per model: its file name's stem, numbered where stems repeat or would
    take the copy machine's or the base's label."""
    stems = [re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem) or "model" for p in paths]
    return [s if s not in (COPY_MACHINE, BASE) and stems.count(s) == 1 else f"{s}-{i + 1}" for i, s in enumerate(stems)]


def copy_stage(plan: Plan) -> Stage | None:
    """The copy LoRA of A, where a target uses the copy machine method (a direct target needs none)."""
    return next((s for s in plan.stages if s.role is Role.COPY and not s.reverse), None)


def swept_loras(plan: Plan) -> dict[str, Stage]:
    """The LoRAs the sweep tests, by name: each target's difference LoRA (diff or direct), a symmetric target's slider,
    and the naive LoRA where baseline = true."""
    return {st.sweep_key: st for st in plan.stages if st.swept}


def sweep_models(plan: Plan) -> list[SweepModel]:
    """The copy machine model (if there is one and the check asks for it), then check.models or the base model."""
    out = []
    if plan.preset.check.copy_machine and copy_stage(plan) is not None:
        if plan.preset.merge == "checkpoint":
            out.append(SweepModel(COPY_MACHINE, plan.stage("merge").output))
        else:  # in memory: the base with the copy LoRA at weight 1 is what the diff stages trained against
            out.append(SweepModel(COPY_MACHINE, plan.preset.base_model, (plan.stage("copy").output,)))
    models = plan.preset.check.models
    if models:
        out += [SweepModel(label, m) for label, m in zip(labels_for(models), models)]
    elif plan.preset.check.base:
        out.append(SweepModel(BASE, plan.preset.base_model))
    return out


def verify_trained(plan: Plan) -> None:
    """Every output the check reads exists and was made from the settings the plan now holds."""
    rerun = f"cml run {plan.run_dir / 'preset.toml'}"
    copy = copy_stage(plan)
    needed: list[Stage] = ([copy] if copy else []) + list(swept_loras(plan).values())
    if copy and plan.preset.check.copy_machine and plan.preset.merge == "checkpoint":
        needed.append(plan.stage("merge"))
    problems = []
    for st in needed:
        rel = st.output.relative_to(plan.run_dir)
        rec = read(StageRecord, st.record_path)
        if not st.output.is_file():
            problems.append(f"{rel} is missing")
        elif rec is None:
            problems.append(f"{rel} has no record of what it was made from")
        elif rec.fingerprint != st.fingerprint:
            problems.append(f"{rel} was made from other settings or inputs than {plan.run_dir / 'preset.toml'} now holds")
    if problems:
        raise InputError(
            "check: " + "; ".join(problems),
            str(plan.run_dir),
            f"`{rerun}` brings the run up to date with that preset (add --force to replace finished LoRAs); the check then measures what was trained with it",
        )


@dataclass
class Sampling:
    """The images of one check: which gen_img run (model file and LoRAs) makes each job."""

    runs: dict[Path, list[Path]]  # model file -> the LoRAs loaded into its run, in order
    jobs: dict[Path, list[Job]]


def muls(loras: list[Path], weights: dict[Path, float]) -> tuple[float, ...]:
    return tuple(weights.get(p, 0.0) for p in loras)


def plan_sampling(plan: Plan, models: list[SweepModel]) -> Sampling:
    """One generator run per model file, holding every image the check needs of it."""
    c = plan.preset.check
    copy_st = copy_stage(plan)
    diffs = [st.output for st in swept_loras(plan).values()]
    runs: dict[Path, list[Path]] = {}
    if copy_st is not None:  # the copy check loads the copy LoRA on the base
        runs[plan.preset.base_model] = [copy_st.output, *diffs]
    for m in models:
        runs.setdefault(m.model, [*m.fixed, *diffs])
        for p in m.fixed:
            if p not in runs[m.model]:
                runs[m.model].insert(0, p)
    jobs: dict[Path, list[Job]] = {k: [] for k in runs}
    base = plan.preset.base_model
    if copy_st is not None:
        for s in c.seeds:
            for w in (0.0, 1.0) if c.copy_check_base else (1.0,):
                jobs[base].append(Job("", s, muls(runs[base], {copy_st.output: w})))
    for m in models:
        for diff in diffs:
            for w in c.weights:
                for prompt in c.prompts:
                    for s in c.seeds:
                        jobs[m.model].append(Job(prompt, s, muls(runs[m.model], {**{f: 1.0 for f in m.fixed}, diff: w})))
    return Sampling(runs, jobs)


def copy_check(plan: Plan, sd: SdScripts, images: dict[Job, Image.Image], loras: list[Path], mode: str) -> dict:
    """Base model with (and, with check.copy_check_base, without) the copy LoRA, empty prompt, every seed: SSIM to A
    as the VAE returns it. ``ssim_base`` is None where the base alone was not drawn."""
    seeds = plan.preset.check.seeds
    with_base = plan.preset.check.copy_check_base
    copy_st = copy_stage(plan)
    assert copy_st is not None
    copy = copy_st.output
    copy_imgs = [images[Job("", s, muls(loras, {copy: 1.0}))] for s in seeds]
    base_imgs = [images[Job("", s, muls(loras, {copy: 0.0}))] if with_base else None for s in seeds]
    ref_paths = references_of_a(plan, sd, copy_imgs[0].width, mode)
    refs = [Image.open(p).convert("RGB") for p in ref_paths]
    rows, scores = [], []
    for s, base_img, copy_img in zip(seeds, base_imgs, copy_imgs):
        # several As: the copy LoRA is judged against the A it draws nearest (its SSIM to each A is kept too)
        to_each = [rgb_ssim(copy_img, ref) for ref in refs]
        i = max(range(len(refs)), key=to_each.__getitem__)
        score: dict[str, Any] = {"seed": s, "ssim_copy_lora": to_each[i], "ssim_base": rgb_ssim(base_img, refs[i]) if base_img else None}
        if len(refs) > 1:
            score |= {"nearest_a": i, "ssim_copy_lora_to_each_a": to_each}
        scores.append(score)
        a = plan.inputs.source[i].image
        rows.append([a.convert("RGB").resize(copy_img.size, Image.Resampling.LANCZOS), refs[i], *([base_img] if base_img else []), copy_img])
    base_label = lambda v: f"\nbase {v:.3f}" if v is not None else ""  # noqa: E731
    labels = [f"seed {s['seed']}\nSSIM to A (VAE){base_label(s['ssim_base'])}\ncopy {s['ssim_copy_lora']:.3f}" for s in scores]
    path = plan.run_dir / "check" / "copy_check.png"
    columns = ["A", "A (VAE)", "base", "+ copy LoRA"] if with_base else ["A", "A (VAE)", "+ copy LoRA"]
    grid(rows, labels, columns, "copy check").save(path)
    return {"image": str(path), "reference": str(ref_paths[0]), "references": [str(p) for p in ref_paths], "seeds": scores}


def sweep(
    plan: Plan, key: str, lora: Stage, on: SweepModel, images: dict[Job, Image.Image], loras: list[Path], a_refs: list[Image.Image]
) -> tuple[Path, dict[str, dict[str, float]], dict[str, list[float]]]:
    """One LoRA's weight sweep on one model: its grid, and per weight the three measures of a difference LoRA, each
    the mean over the check's prompts and seeds:
    - effect: the transform's own measure (grayscale: mean saturation, shown as a multiple of weight 0's);
    - interference: luminance SSIM against weight 0 (the content's structure kept);
    - leakage: SSIM of the image to A (did it draw A instead of the prompt's content?); with several As, to the A
      each image is nearest; the mean SSIM to each A is returned beside (weight -> one per A; empty for one A)."""
    c = plan.preset.check
    target = lora.target
    assert target is not None
    diff = lora.output
    rows_def = [(p, s) for p in c.prompts for s in c.seeds]
    cells = [[images[Job(p, s, muls(loras, {**{f: 1.0 for f in on.fixed}, diff: w}))] for w in c.weights] for p, s in rows_def]
    labels = [f"{p or '(empty prompt)'}\nseed {s}" for p, s in rows_def]
    path = plan.run_dir / "check" / f"sweep-{key}-{on.label}.png"
    grid(cells, labels, [f"w={w:+g}" for w in c.weights], f"on {on.label.replace('_', ' ')}").save(path)
    effect_name, effect = EFFECTS[getattr(plan.preset.targets[target], "transform", None)]  # the target's transform names the measure
    zero = c.weights.index(0.0)
    per_weight: dict[str, dict[str, float]] = {}
    each_a: dict[str, list[float]] = {}
    for col, w in enumerate(c.weights):
        eff = [effect(row[col], row[zero]) for row in cells]
        ssim = [luminance_ssim(row[col], row[zero]) for row in cells]
        to_each = [[rgb_ssim(row[col], ref) for ref in a_refs] for row in cells]
        leak = [max(t) for t in to_each]
        per_weight[f"{w:g}"] = {effect_name: mean(eff), "luminance_ssim_vs_0": mean(ssim), "ssim_to_a": mean(leak)}
        if len(a_refs) > 1:
            each_a[f"{w:g}"] = [mean([t[i] for t in to_each]) for i in range(len(a_refs))]
    return path, per_weight, each_a


def references_of_a(plan: Plan, sd: SdScripts, size: int, mode: str) -> list[Path]:
    """Each A as the model can give it back: through the base's VAE (SD families), else A itself at the check's size."""
    if family(plan.inputs.family).generator == "trainer":  # a DiT family: no VAE round trip through sd-scripts' SD loader
        paths = []
        for name, src in zip(a_names(len(plan.inputs.source)), plan.inputs.source):
            paths.append(plan.run_dir / "check" / f"{name}.png")
            src.image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(paths[-1])
        return paths
    return vae_roundtrip(plan, sd, size, mode)


def run_check(plan: Plan, sd: SdScripts, mode: str = "normal") -> CheckMetrics:
    verify_trained(plan)
    out = plan.run_dir / "check"
    out.mkdir(parents=True, exist_ok=True)
    models = sweep_models(plan)
    sampling = plan_sampling(plan, models)
    images: dict[Path, dict[Job, Image.Image]] = {}
    for i, (model, run_loras) in enumerate(sampling.runs.items()):
        name = "base" if model == plan.preset.base_model else next(m.label for m in models if m.model == model)
        images[model] = generate(plan, sd, f"{i + 1}-{name}", model, run_loras, sampling.jobs[model], mode)
    base = plan.preset.base_model
    copy = copy_check(plan, sd, images[base], sampling.runs[base], mode) if copy_stage(plan) is not None else None
    swept = swept_loras(plan)
    targets: dict[str, dict] = {key: {} for key in swept}
    each_a: dict[str, dict] = {}
    grids = []
    size = plan.preset.check.resolution or plan.preset.train.resolution
    a_refs = [Image.open(p).convert("RGB") for p in references_of_a(plan, sd, size, mode)] if swept else []
    for key, lora in swept.items():
        for m in models:
            path, per_weight, to_each = sweep(plan, key, lora, m, images[m.model], sampling.runs[m.model], a_refs)
            targets[key][m.label] = per_weight
            if to_each:
                each_a.setdefault(key, {})[m.label] = to_each
            grids.append(str(path))
    curves = {}
    for st in plan.stages:
        rec = read(StageRecord, st.record_path)
        if st.kind == "train" and rec is not None:
            curves[st.name] = rec.losses
    loss_plot(curves, out / "losses.png")
    result = CheckMetrics(
        settings=plan.preset.check.model_dump(mode="json"),
        copy_check=copy,
        targets=targets,
        leakage_to_each_a=each_a,
        models={m.label: m.describe() for m in models},
        grids=grids,
        loss_plot=str(out / "losses.png"),
    )
    result.write(out / "metrics.json")
    write_report(plan, result)
    return result
