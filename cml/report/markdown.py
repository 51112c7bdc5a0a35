"""report.md, and the metrics table printed at the end of a check."""

from __future__ import annotations

from pathlib import Path

from cml.plan import Plan
from cml.records import CheckMetrics


def write_report(plan: Plan, r: CheckMetrics) -> Path:
    rel = lambda p: Path(p).relative_to(plan.run_dir).as_posix()  # noqa: E731
    c = r.settings
    lines = [f"# {plan.preset.name}: check", ""]
    copy = r.copy_check
    if copy is not None:
        lines += [
            "## Copy check",
            "",
            "Base model + copy LoRA at weight 1, empty prompt: it should give back image A whatever the seed. "
            "SSIM is measured against A as the base model's VAE returns it (encoded, then decoded): no model can draw A better; "
            "with several As, against the one each image is nearest.",
            "",
            f"![copy check]({rel(copy['image'])})",
            "",
            "| seed | SSIM to A (VAE), base | SSIM to A (VAE), base + copy LoRA |",
            "|---|---|---|",
        ]
        for s in copy["seeds"]:
            base = f"{s['ssim_base']:.3f}" if s["ssim_base"] is not None else "not drawn (check.copy_check_base = false)"
            nearest = f" (A {s['nearest_a'] + 1}, the nearest)" if "nearest_a" in s else ""
            lines.append(f"| {s['seed']} | {base} | {s['ssim_copy_lora']:.3f}{nearest} |")
    lines += [
        "",
        "## Weight sweeps",
        "",
        "Each difference LoRA (diff, direct, slider) at every weight, same seeds and prompts; on the copy machine model the change A -> B shows cleanest.",
        "",
    ]
    lines += ["| sweep label | model |", "|---|---|"] + [f"| {label} | `{what}` |" for label, what in r.models.items()] + [""]
    for g in r.grids:
        lines += [f"![{Path(g).stem}]({rel(g)})", ""]
    lines += side_by_side(r)
    lines += leakage_to_each_a(r)
    lines += ["## Metrics", ""]
    for t, per_model in r.targets.items():
        for m, per_weight in per_model.items():
            keys = list(next(iter(per_weight.values())))
            ratio = "mean_saturation" in keys and per_weight["0"]["mean_saturation"] > 0  # grayscale: x of weight 0's
            head = keys + (["saturation vs weight 0"] if ratio else [])
            lines += [f"### {t} on {m.replace('_', ' ')} (`{r.models.get(m, m)}`)", "", "| weight | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
            for w, vals in per_weight.items():
                cells = [f"{vals[k]:.4f}" for k in keys]
                if ratio:
                    cells.append(f"{vals['mean_saturation'] / per_weight['0']['mean_saturation']:.2f}x")
                lines.append(f"| {w} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "## Training loss",
        "",
        f"![loss curves]({rel(r.loss_plot or '')})",
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


def print_table(result: CheckMetrics) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    for t, per_model in result.targets.items():
        for m, per_weight in per_model.items():
            keys = list(next(iter(per_weight.values())))
            table = Table(title=f"{t} on {m}")
            table.add_column("weight")
            for k in keys:
                table.add_column(k)
            for w, vals in per_weight.items():
                table.add_row(w, *(f"{vals[k]:.4f}" for k in keys))
            console.print(table)


def leakage_to_each_a(r: CheckMetrics) -> list[str]:
    """Several As: each swept LoRA's mean SSIM to each A, per model and weight (the side-by-side table's leakage is
    to the nearest A)."""
    if not r.leakage_to_each_a:
        return []
    n = len(next(iter(next(iter(next(iter(r.leakage_to_each_a.values())).values())).values())))
    lines = ["## Leakage to each A", "", "| LoRA | on | weight | " + " | ".join(f"SSIM to A {i + 1}" for i in range(n)) + " |", "|---" * (n + 3) + "|"]
    for lora, per_model in r.leakage_to_each_a.items():
        for model, per_weight in per_model.items():
            for w, each in per_weight.items():
                lines.append(f"| {lora} | {model.replace('_', ' ')} | {w} | " + " | ".join(f"{x:.3f}" for x in each) + " |")
    return [*lines, ""]


def side_by_side(r: CheckMetrics) -> list[str]:
    """Every swept LoRA beside the others, per model, at every swept weight but 0: effect (saturation as a multiple of
    weight 0's, for grayscale; else the mean pixel change), interference (luminance SSIM against weight 0) and leakage
    (SSIM to A, the nearest A with several, with weight 0's beside it)."""
    rows = []
    for lora, per_model in r.targets.items():
        for model, per_weight in per_model.items():
            zero = per_weight.get("0")
            if zero is None:
                continue
            for w in sorted((k for k in per_weight if k != "0"), key=lambda k: -float(k)):
                v = per_weight[w]
                if "mean_saturation" in v:
                    effect = f"{v['mean_saturation'] / zero['mean_saturation']:.2f}x" if zero["mean_saturation"] > 0 else "-"
                else:
                    effect = f"{v.get('mean_pixel_change', 0.0):.3f}"
                leak = f"{v.get('ssim_to_a', float('nan')):.3f} ({zero.get('ssim_to_a', float('nan')):.3f})"
                rows.append(f"| {lora} | {model.replace('_', ' ')} | {w} | {effect} | {v['luminance_ssim_vs_0']:.3f} | {leak} |")
    if not rows:
        return []
    return [
        "## The difference LoRAs side by side",
        "",
        "Mean over the check's prompts and seeds. Effect: saturation at the weight as a multiple of weight 0's (grayscale), "
        "else the mean pixel change; interference: luminance SSIM against weight 0 (1: the content's structure kept); "
        "leakage: SSIM to A (to the nearest A, with several; weight 0's in brackets): higher than weight 0's means it "
        "draws A instead of the prompt.",
        "",
        "| LoRA | on | weight | effect | interference | leakage (weight 0) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
