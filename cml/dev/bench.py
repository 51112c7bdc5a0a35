"""`make bench`: what cml costs, what its cuts save, and what its methods cost, on the demo model at 64 px.

Parts (``--only`` runs some; each writes its results into bench/results.json at once, so a run cut short keeps
what it measured, and bench/results.md is made from all that is there):
- ``ops``: host tensor operations per training step, before and after cml's exact cuts (cml/dev/opcount.py);
- ``setup``: a training stage's set-up, from its time-stamped lines (imports, model load, latent caching, first
  step), through sd-scripts' own trainer and through cml's;
- ``cuts``: one stage's seconds per step, through sd-scripts' own trainer and through cml's (the same LoRA);
- ``methods``: the direct method at its default steps against the copy machine pipeline (copy + merge + diff) at
  the article's 500 + 500 steps, and both at the demo's step counts;
- ``overhead``, ``merge_modes``, ``resume``, ``many_targets``: the wrapper's cost, the two merge modes, a resumed
  run after one target changed, K targets on one copy machine against K pipelines.
One machine, one run: ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from cml.dev import root

ROOT = root()
PARTS = ("ops", "setup", "cuts", "methods", "recipes", "overhead", "resume")
# A key each part's results hold in this bench's format (results.json keeps the parts of earlier runs).
CURRENT = {
    "ops": {"ratio_after_before"},
    "setup": {"cml"},
    "cuts": {"ratio_cml_sd_scripts"},
    "methods": {"direct_default"},
    "recipes": set(),
    "overhead": {"merge_modes"},
    "resume": {"resume_ratio"},
}


def measure(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Wall seconds, and the peak RSS of the command or of the largest process it waited for (wait4's rusage)."""
    with tempfile.TemporaryFile() as log:
        t = time.perf_counter()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            log.seek(0)
            raise SystemExit(f"bench: {' '.join(map(str, argv[:4]))} ... failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return {"seconds": secs, "peak_rss_kib": usage.ru_maxrss}


def timed_lines(argv: list[str], cwd: Path, env: dict | None = None) -> list[tuple[float, str]]:
    """Each line a command prints, with the seconds since it started, as the line arrives."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []
    assert p.stdout is not None
    buf = b""
    while True:
        chunk = p.stdout.read1(65536) if hasattr(p.stdout, "read1") else p.stdout.read(65536)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.replace(b"\r", b"\n").split(b"\n")
        now = time.monotonic() - t0
        lines += [(now, ln.decode(errors="replace")) for ln in done if ln.strip()]
    if p.wait() != 0:
        raise SystemExit("bench: " + " ".join(argv[:5]) + " failed:\n" + "\n".join(ln for _, ln in lines[-30:]))
    return lines


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def med(xs: list[dict], key: str = "seconds") -> float:
    return statistics.median(x[key] for x in xs)


class Bench:
    def __init__(self, work: Path, reps: int):
        from cml.demo import prepare_demo
        from cml.sdscripts import locate

        self.work, self.reps = work, reps
        self.sd = locate()
        _, assets = prepare_demo()
        self.assets: dict[str, Any] = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in assets.items()}
        self.model = str(assets["base_model"])

    def preset(self, name: str, targets: dict, **top: Any) -> Path:
        data: dict[str, Any] = {
            **self.assets,
            "name": name,
            "output_dir": str(self.work / "runs"),
            "device": "cpu",
            "train": {"resolution": 64},
            "targets": targets,
        }
        for k, v in top.items():
            data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
        p = self.work / f"{name}.toml"
        p.write_text(tomli_w.dumps(data))
        return p

    def cml(self, preset: Path, *extra: str) -> dict:
        return measure([sys.executable, "-m", "cml", "run", str(preset), "--quiet", *extra], cwd=ROOT)

    def stages(self, name: str) -> dict[str, float]:
        """Seconds of each stage of the last run of ``name``, from its records."""
        from cml.records import StageRecord, read

        out = {}
        for rec_path in sorted((self.work / "runs" / name).glob("*/record.json")):
            rec = read(StageRecord, rec_path)
            if rec is not None and rec.seconds is not None:
                out[rec.stage] = rec.seconds
        return out

    def clean(self, name: str) -> None:
        shutil.rmtree(self.work / "runs" / name, ignore_errors=True)


def run_direct_commands(steps_file: Path, cwd: Path) -> int:
    """The overhead part's "no cml in the loop" side: each stage's argv run in turn, its output moved into place."""
    for s in json.loads(steps_file.read_text()):
        Path(s["produced"]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(s["argv"], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.replace(s["produced"], s["output"])
    return 0


# ---------------------------------------------------------------- parts

ONE = {"grayscale": {"transform": "grayscale"}}
TWO = {"grayscale": {"transform": "grayscale"}, "invert": {"transform": "invert"}}


def part_ops(b: Bench) -> dict:
    from cml.sdscripts import python_env

    p = subprocess.run([sys.executable, "-m", "cml.sd_process.dev.opcount", b.model, "64"], cwd=b.sd.path, env=python_env(b.sd), capture_output=True, text=True)
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"bench: opcount failed:\n{p.stderr[-3000:]}")
    r = json.loads(line)
    r["ratio_after_before"] = r["step_after"] / r["step_before"]
    return r


SETUP_MARKS = (  # sd-scripts' own lines, in the order a training stage prints them
    ("first line", ""),
    ("model loaded", "loading text encoder"),
    ("latents cached", "create LoRA network"),
    ("first step", "steps:  "),
)


def setup_breakdown(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from the trainer's start to each mark, from its time-stamped output."""
    out: dict[str, float] = {}
    start = next(t for t, ln in lines if "$ (cd " in ln or ln.startswith("cml: [1/1] copy:"))
    for name, needle in SETUP_MARKS:
        hit = next((t for t, ln in lines if t >= start and needle in ln and (name != "first step" or " 1/" in ln)), None)
        if name == "first line":
            hit = next((t for t, ln in lines if t > start and not ln.startswith("cml:")), None)
        if hit is not None:
            out[name] = round(hit - start, 2)
    return out


def cml_start(lines: list[tuple[float, str]]) -> float:
    """Seconds from cml's launch to the first trainer's start (the command line --verbose prints just before it)."""
    return round(next(t for t, ln in lines if "$ (cd " in ln), 2)


def part_setup(b: Bench) -> dict:
    out: dict[str, Any] = {}
    starts = []
    for speedups in (False, True):  # the second with everything cached that the first made (sha256, device probe)
        name = f"setup-{speedups}"
        b.clean(name)
        p = b.preset(name, ONE, merge="in_memory", speedups=speedups, copy={"steps": 3}, train={"resolution": 64, "steps": 2})
        lines = timed_lines([sys.executable, "-m", "cml", "run", str(p), "--verbose", "--from", "copy", "--force"], ROOT)
        out["cml" if speedups else "sd-scripts"] = setup_breakdown([(t, ln) for t, ln in lines if not ln.startswith("cml: diff")])
        starts.append(cml_start(lines))
    out["cml_start_s"] = {"first": starts[0], "cached": starts[-1]}
    return out


def part_cuts(b: Bench, steps: int) -> dict:
    """One copy stage of ``steps`` steps through sd-scripts' trainer, then cml's: seconds per step (from the bars)."""
    out: dict[str, Any] = {"steps": steps}
    for speedups in (False, True):
        name = f"cuts-{speedups}"
        b.clean(name)
        p = b.preset(name, ONE, merge="in_memory", speedups=speedups, copy={"steps": steps}, train={"resolution": 64, "steps": 1})
        lines = timed_lines([sys.executable, "-m", "cml", "run", str(p), "--verbose"], ROOT)
        bar = [(t, ln) for t, ln in lines if "steps:" in ln and f"/{steps} [" in ln]
        first = next(t for t, ln in bar if f" 1/{steps} [" in ln)
        last = next(t for t, ln in reversed(bar) if f" {steps}/{steps} [" in ln)
        out["cml" if speedups else "sd-scripts"] = {"s_per_step": (last - first) / (steps - 1), "stage_s": b.stages(name).get("copy")}
    out["ratio_cml_sd_scripts"] = out["cml"]["s_per_step"] / out["sd-scripts"]["s_per_step"]
    return out


def part_methods(b: Bench, article_steps: int) -> dict:
    """The direct method at its default steps against the copy machine pipeline, at the article's and the demo's steps."""
    out: dict[str, Any] = {}
    b.clean("direct")
    m = b.cml(b.preset("direct", {"grayscale": {"transform": "grayscale", "method": "direct"}}))
    out["direct_default"] = {"seconds": m["seconds"], "stages": b.stages("direct")}
    for label, copy_steps, diff_steps, merge in (("article", article_steps, article_steps, "checkpoint"), ("demo", 150, 30, "in_memory")):
        name = f"pipeline-{label}"
        b.clean(name)
        m = b.cml(b.preset(name, ONE, merge=merge, copy={"steps": copy_steps}, train={"resolution": 64, "steps": diff_steps}))
        out[f"copy_machine_{label}"] = {"seconds": m["seconds"], "stages": b.stages(name), "copy_steps": copy_steps, "diff_steps": diff_steps, "merge": merge}
        out[f"ratio_direct_vs_{label}"] = out["direct_default"]["seconds"] / m["seconds"]
    return out


# The faster recipes, on the demo at an equal number of image samples (copy 150 x 1 = 38 x 4, diff 30 x 1 = 8 x 4):
# the demo's own recipe (batch 1), batch 4 at the article's learning rate and at twice it, sd-scripts' torch_compile
# (cold: an empty compile cache; then warm), and the fast preset's settings.
RECIPES: dict[str, dict[str, Any]] = {
    "demo recipe (batch 1)": {},
    "batch 4, lr 1e-3": {"train.batch_size": 4, "copy.steps": 38, "train.steps": 8},
    "batch 4, lr 2e-3": {"train.batch_size": 4, "copy.steps": 38, "train.steps": 8, "train.learning_rate": 2e-3},
    "torch_compile, cold": {"train.torch_compile": True},
    "torch_compile, warm": {"train.torch_compile": True},
}


def recipe_figures(run: Path) -> dict[str, Any]:
    """The demo's figures from a run's check/metrics.json: the copy check's worst seed, the sweep at +1 and -1."""
    from cml.records import CheckMetrics, read

    m = read(CheckMetrics, run / "check" / "metrics.json")
    assert m is not None and m.copy_check is not None, run
    w = m.targets["grayscale"]["copy_machine"]
    return {
        "copy_ssim_min": min(x["ssim_copy_lora"] for x in m.copy_check["seeds"]),
        "sat_plus_1": w["1"]["mean_saturation"] / w["0"]["mean_saturation"],
        "sat_minus_1": w["-1"]["mean_saturation"] / w["0"]["mean_saturation"],
        "luma_plus_1": w["1"]["luminance_ssim_vs_0"],
        "luma_minus_1": w["-1"]["luminance_ssim_vs_0"],
    }


def part_recipes(b: Bench, only: list[str] | None = None) -> dict:
    out: dict[str, Any] = {}
    compile_cache = b.work / "torch-compile"  # cold for the first torch_compile run, warm for the next
    shutil.rmtree(compile_cache, ignore_errors=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(compile_cache / "inductor"), "TRITON_CACHE_DIR": str(compile_cache / "triton")}
    for label, sets in RECIPES.items():
        if only and label not in only:
            continue
        name = "recipe-" + "".join(c if c.isalnum() else "-" for c in label)
        b.clean(name)
        argv = [sys.executable, "-m", "cml", "demo", "-o", str(b.work / "runs"), "--quiet", "--set", f"name={name!r}"]
        for k, v in sets.items():
            argv += ["--set", f"{k}={tomli_w.dumps({'v': v})[4:].strip()}"]
        m = measure(argv, env=env, cwd=ROOT)
        stages = b.stages(name)
        out[label] = {
            "sets": sets,
            "seconds": m["seconds"],
            "train_s": stages.get("copy", 0) + stages.get("diff-grayscale", 0),
            **recipe_figures(b.work / "runs" / name),
        }
    return out


def part_overhead(b: Bench, copy_steps: int, diff_steps: int) -> dict:
    from cml.prepare import prepare
    from cml.render.run_folder import render
    from cml.render.scripts import stage_argv
    from cml.sdscripts import python_env

    steps = {"copy": {"steps": copy_steps}, "train": {"resolution": 64, "steps": diff_steps}}
    warm = b.preset("warm", ONE, merge="checkpoint", **steps)  # the caches (sha256, probe, page cache) outside the timings
    b.cml(warm)
    b.clean("warm")
    r: dict = {"cml": [], "commands": [], "in_memory": []}
    ck, mem = b.preset("ckpt", ONE, merge="checkpoint", **steps), b.preset("mem", ONE, merge="in_memory", **steps)
    for _ in range(b.reps):
        b.clean("ckpt")
        m = b.cml(ck)
        m["disk_bytes"] = du(b.work / "runs" / "ckpt")
        r["cml"].append(m)
        b.clean("ckpt")
        plan, sd = prepare(ck, [], None)
        render(plan, sd.path)
        steps_file = b.work / "commands.json"
        steps_file.write_text(
            json.dumps([{"argv": stage_argv(plan, st), "produced": str(st.work_dir / st.output.name), "output": str(st.output)} for st in plan.stages])
        )
        r["commands"].append(measure([sys.executable, "-m", "cml.dev.bench", "commands", str(steps_file), str(sd.path)], env=python_env(sd), cwd=ROOT))
        b.clean("mem")
        m = b.cml(mem)
        m["disk_bytes"] = du(b.work / "runs" / "mem")
        r["in_memory"].append(m)
    full = med(r["cml"])
    return {
        "copy_steps": copy_steps,
        "diff_steps": diff_steps,
        "reps": b.reps,
        "cml_s": full,
        "commands_s": med(r["commands"]),
        "ratio": full / med(r["commands"]),
        "merge_modes": {
            "checkpoint": {"s": full, "peak_rss_gib": med(r["cml"], "peak_rss_kib") / 2**20, "disk_gib": med(r["cml"], "disk_bytes") / 2**30},
            "in_memory": {
                "s": med(r["in_memory"]),
                "peak_rss_gib": med(r["in_memory"], "peak_rss_kib") / 2**20,
                "disk_gib": med(r["in_memory"], "disk_bytes") / 2**30,
            },
        },
    }


def part_resume(b: Bench, copy_steps: int, diff_steps: int) -> dict:
    steps = {"copy": {"steps": copy_steps}, "train": {"resolution": 64, "steps": diff_steps}}
    b.clean("multi")
    two = b.cml(b.preset("multi", TWO, merge="checkpoint", **steps))
    b.clean("single")
    one = b.cml(b.preset("single", ONE, merge="checkpoint", **steps))
    resumed = []
    for i in range(b.reps):
        changed = {**TWO, "invert": {"transform": "invert", "train": {"steps": diff_steps + 1 + i % 2}}}  # one target's setting
        m = b.cml(b.preset("multi", changed, merge="checkpoint", **steps), "--force")
        ran = json.loads((b.work / "runs" / "multi" / "run.json").read_text())["stages_run"]
        assert ran == ["diff-invert"], ran
        resumed.append(m)
    return {
        "two_targets_s": two["seconds"],
        "one_target_s": one["seconds"],
        "many_targets_ratio": two["seconds"] / (2 * one["seconds"]),
        "resume_s": med(resumed),
        "resume_ratio": med(resumed) / two["seconds"],
    }


# ---------------------------------------------------------------- results


def versions(sd) -> dict:
    from importlib import metadata

    from cml import __version__

    return {"cml": __version__, "torch": metadata.version("torch"), "sd_scripts": sd.commit}


def markdown(r: dict) -> str:
    m = r.get("machine", {})
    lines = [
        "# cml benchmarks",
        "",
        f"Machine: {m.get('platform')}, {m.get('cpus')} CPUs, Python {m.get('python')}; torch {r.get('versions', {}).get('torch')}; "
        f"sd-scripts {str(r.get('versions', {}).get('sd_scripts'))[:10]}; cml {r.get('versions', {}).get('cml')}.",
        "The demo model (SD1.5 architecture) at 64 px, on the CPU. Each part's figures come from one `make bench` run of that part.",
        "",
    ]
    if "ops" in r:
        o = r["ops"]
        lines += [
            "## Host tensor operations per training step",
            "",
            f"Counted with a dispatch-mode counter around sd-scripts' own modules ({o['lora_modules']} LoRA modules, dim 16, {o['optimizer']}):",
            "",
            "| | sd-scripts | with cml's exact cuts |",
            "|---|---|---|",
            f"| text encoder (every step; cml: once) | {o['text_encoder']} | 0 |",
            f"| U-Net forward + backward, no LoRA | {o['unet']} | {o['unet']} |",
            f"| U-Net forward + backward, with the LoRA | {o['unet_lora_sd_scripts']} ({o['mul_sd_scripts']} multiplies) | {o['unet_lora_cml']} ({o['mul_cml']} multiplies) |",
            f"| optimizer step | {o['optimizer_step_sd_scripts']} | {o['optimizer_step_cml']} |",
            f"| device syncs in the optimizer step | {o['device_syncs_sd_scripts']} | {o['device_syncs_cml']} |",
            f"| **a whole step** | **{o['step_before']}** | **{o['step_after']}** (ratio **{o['ratio_after_before']:.3f}**) |",
            "",
        ]
    if "setup" in r:
        s = r["setup"]
        keys = [k for k, _ in SETUP_MARKS]
        lines += ["## A training stage's set-up (seconds from the trainer's start)", "", "| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for who, marks in s.items():
            if who in ("sd-scripts", "cml"):
                lines.append(f"| {who} | " + " | ".join(f"{marks.get(k, float('nan')):.1f}" for k in keys) + " |")
        if "cml_start_s" in s:
            st = s["cml_start_s"]
            lines += [
                "",
                f"cml's own start, from its launch to the first trainer's: **{st['cached']:.2f} s** with the base model's sha256 and the device probe cached (goal <= 2 s); {st['first']:.2f} s in the bench's first run.",
            ]
        lines.append("")
    if "cuts" in r:
        c = r["cuts"]
        lines += [
            "## Seconds per step, one copy stage",
            "",
            f"sd-scripts' trainer {c['sd-scripts']['s_per_step']:.3f} s, cml's {c['cml']['s_per_step']:.3f} s ({c['steps']} steps): "
            f"ratio **{c['ratio_cml_sd_scripts']:.3f}** (the same LoRA, bit for bit under MKL's reproducible mode: tests/sdscripts/test_speedups.py).",
            "",
        ]
    if "methods" in r:
        d = r["methods"]
        lines += [
            "## The direct method against the copy machine pipeline",
            "",
            "| run | seconds | ratio direct / it |",
            "|---|---|---|",
            f"| direct, its default steps (the direct stage {d['direct_default']['stages'].get('direct-grayscale', float('nan')):.0f} s) | {d['direct_default']['seconds']:.0f} | |",
            f"| copy machine: copy {d['copy_machine_article']['copy_steps']} + merge + diff {d['copy_machine_article']['diff_steps']} (the article's steps) | "
            f"{d['copy_machine_article']['seconds']:.0f} | **{d['ratio_direct_vs_article']:.3f}** |",
            f"| copy machine: copy {d['copy_machine_demo']['copy_steps']} + diff {d['copy_machine_demo']['diff_steps']}, in memory (the demo's) | "
            f"{d['copy_machine_demo']['seconds']:.0f} | **{d['ratio_direct_vs_demo']:.3f}** |",
            "",
        ]
    if "recipes" in r:
        rows = {k: v for k, v in r["recipes"].items() if isinstance(v, dict)}
        lines += [
            "## Faster recipes on the demo model, at an equal number of image samples",
            "",
            "Each a `cml demo` with `--set`s; figures as the demo's: the copy check's worst seed (SSIM to A), the grayscale",
            "sweep on the copy machine model (saturation as a multiple of weight 0's; luminance SSIM against weight 0).",
            "",
            "| recipe | settings | copy SSIM, worst seed | sat +1 | sat -1 | luma +1 | luma -1 | copy + diff s | cml demo s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, v in rows.items():
            sets = ", ".join(f"{a}={b}" for a, b in v["sets"].items()) or "as shipped"
            lines.append(
                f"| {k} | {sets} | {v['copy_ssim_min']:.3f} | {v['sat_plus_1']:.3f}x | {v['sat_minus_1']:.3f}x | "
                f"{v['luma_plus_1']:.3f} | {v['luma_minus_1']:.3f} | {v['train_s']:.0f} | {v['seconds']:.0f} |"
            )
        lines.append("")
    if "overhead" in r:
        o = r["overhead"]
        mm = o["merge_modes"]
        lines += [
            f"## The wrapper and the merge modes (copy {o['copy_steps']}, diff {o['diff_steps']} steps; medians of {o['reps']})",
            "",
            "| measure | value | ratio |",
            "|---|---|---|",
            f"| overhead: `cml run` vs the same sd-scripts commands run directly | {o['cml_s']:.1f} s vs {o['commands_s']:.1f} s | **{o['ratio']:.3f}** |",
            f"| merge modes, wall time: in_memory vs checkpoint | {mm['in_memory']['s']:.1f} s vs {mm['checkpoint']['s']:.1f} s | **{mm['in_memory']['s'] / mm['checkpoint']['s']:.3f}** |",
            f"| merge modes, peak RSS | {mm['in_memory']['peak_rss_gib']:.1f} GiB vs {mm['checkpoint']['peak_rss_gib']:.1f} GiB | {mm['in_memory']['peak_rss_gib'] / mm['checkpoint']['peak_rss_gib']:.3f} |",
            f"| merge modes, disk written | {mm['in_memory']['disk_gib']:.3f} GiB vs {mm['checkpoint']['disk_gib']:.3f} GiB | {mm['in_memory']['disk_gib'] / mm['checkpoint']['disk_gib']:.3f} |",
            "",
        ]
    if "resume" in r:
        o = r["resume"]
        lines += [
            "## Resume and many targets",
            "",
            f"- change one target's setting, re-run: {o['resume_s']:.1f} s vs the full 2-target run {o['two_targets_s']:.1f} s: **{o['resume_ratio']:.3f}**",
            f"- 2 targets on one copy machine vs 2 separate pipelines: {o['two_targets_s']:.1f} s vs {2 * o['one_target_s']:.1f} s: **{o['many_targets_ratio']:.3f}**",
            "",
        ]
    lines.append(f"GPU: {r.get('gpu', 'not measured here')}.")
    return "\n".join(lines) + "\n"


def gpu_note() -> str:
    from cml.device import nvidia_gpus

    if nvidia_gpus():
        return "an NVIDIA GPU is here: `make bench-gpu` measures the article's recipe on it"
    return "not measured here (no CUDA GPU): `make bench-gpu` on a CUDA machine, see bench/results-gpu.md"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["commands"]:
        return run_direct_commands(Path(argv[1]), Path(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=PARTS, help="run only these parts (the others' results are kept)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--copy-steps", type=int, default=10, help="overhead and resume parts")
    ap.add_argument("--diff-steps", type=int, default=5, help="overhead and resume parts")
    ap.add_argument("--cut-steps", type=int, default=30)
    ap.add_argument("--article-steps", type=int, default=500, help="the methods part's copy machine pipeline")
    ap.add_argument("--recipes", nargs="*", choices=list(RECIPES), help="the recipes part: only these")
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    a = ap.parse_args(argv)
    work = a.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    b = Bench(work, a.reps)
    results_file = a.out / "results.json"
    try:
        res = json.loads(results_file.read_text())
    except (OSError, ValueError):
        res = {}
    res = {k: v for k, v in res.items() if k in PARTS and CURRENT[k] <= set(v)}  # parts an older bench wrote otherwise: gone
    res.update(machine={"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}, versions=versions(b.sd), gpu=gpu_note())
    runs = {
        "ops": lambda: part_ops(b),
        "setup": lambda: part_setup(b),
        "cuts": lambda: part_cuts(b, a.cut_steps),
        "methods": lambda: part_methods(b, a.article_steps),
        "recipes": lambda: part_recipes(b, a.recipes),
        "overhead": lambda: part_overhead(b, a.copy_steps, a.diff_steps),
        "resume": lambda: part_resume(b, a.copy_steps, a.diff_steps),
    }
    for part in a.only or PARTS:
        print(f"bench: {part} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        res[part] = runs[part]()
        res[part]["bench_s"] = round(time.monotonic() - t, 1)
        results_file.write_text(json.dumps(res, indent=2))
        (a.out / "results.md").write_text(markdown(res))
    shutil.rmtree(work, ignore_errors=True)
    print((a.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
