"""`make bench`: what the wrapper costs and what the fast paths save, on the demo model at 64 px.

One run measures everything on one machine, so the ratios side by side compare like with like:
- overhead: `cml run` vs the same sd-scripts commands run directly (as commands.sh runs them);
- merge modes: checkpoint vs in_memory, whole pipeline: wall time, peak RSS, disk written;
- resume: re-running after changing one target's setting vs the full run;
- many targets: K targets on one copy machine vs K separate pipelines.
Writes bench/results.json and bench/results.md.
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
import time
from pathlib import Path
from typing import Any

import tomli_w

from cml.dev import root

ROOT = root()
# Runs a command and prints the peak RSS (KiB) of its largest descendant: a fresh process per measurement.
PEAK = "import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]).returncode; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r)"


def measure(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PEAK, *argv], env=env, cwd=cwd, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:4])} ... failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return {"seconds": secs, "peak_rss_kib": int(p.stderr.strip().splitlines()[-1])}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Bench:
    def __init__(self, work: Path, reps: int, copy_steps: int, diff_steps: int):
        from cml.demo import prepare_demo
        from cml.sdscripts import locate

        self.work, self.reps = work, reps
        self.sd = locate()
        _, assets = prepare_demo()
        self.assets = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in assets.items()}  # base_model, source, tokenizer
        self.copy_steps, self.diff_steps = copy_steps, diff_steps

    def preset(self, name: str, merge: str, targets: dict) -> Path:
        data = {
            **self.assets,
            "name": name,
            "merge": merge,
            "output_dir": str(self.work / "runs"),
            "device": "cpu",
            "train": {"resolution": 64, "steps": self.diff_steps},
            "copy": {"steps": self.copy_steps},
            "targets": targets,
        }
        p = self.work / f"{name}.toml"
        p.write_text(tomli_w.dumps(data))
        return p

    def cml(self, preset: Path, *extra: str) -> dict:
        return measure([sys.executable, "-m", "cml", "run", str(preset), "--quiet", *extra], cwd=ROOT)

    def direct(self, preset: Path) -> dict:
        """The commands of commands.sh, run one after another: no cml in the loop."""
        from cml.kohya.scripts import stage_argv
        from cml.kohya.write import render
        from cml.prepare import prepare
        from cml.sdscripts import python_env

        plan, sd = prepare(preset, [], None)
        render(plan, sd.path)
        steps = self.work / "direct.json"
        steps.write_text(
            json.dumps([{"argv": stage_argv(plan, st), "produced": str(st.work_dir / st.output.name), "output": str(st.output)} for st in plan.stages])
        )
        return measure([sys.executable, "-m", "cml.dev.bench", "direct", str(steps), str(sd.path)], env=python_env(sd), cwd=ROOT)

    def clean(self, name: str) -> None:
        shutil.rmtree(self.work / "runs" / name, ignore_errors=True)


def med(xs: list[dict], key: str = "seconds") -> float:
    return statistics.median(x[key] for x in xs)


def run_direct(steps_file: Path, cwd: Path) -> int:
    """The bench's "no cml in the loop" side: each stage's argv run in turn, its output moved into place."""
    for s in json.loads(steps_file.read_text()):
        Path(s["produced"]).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(s["argv"], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.replace(s["produced"], s["output"])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["direct"]:
        return run_direct(Path(argv[1]), Path(argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--copy-steps", type=int, default=10)
    ap.add_argument("--diff-steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    a = ap.parse_args(argv)
    work = a.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    b = Bench(work, a.reps, a.copy_steps, a.diff_steps)
    one = {"grayscale": {"transform": "grayscale"}}
    two = {"grayscale": {"transform": "grayscale"}, "invert": {"transform": "invert"}}
    say = lambda m: print(f"bench: {m}", file=sys.stderr, flush=True)  # noqa: E731

    # Warm the caches (demo model, sha256 of the base, page cache) outside the timings.
    warm = b.preset("warm", "checkpoint", one)
    b.cml(warm)
    b.clean("warm")

    r: dict = {"overhead": {"cml": [], "direct": []}, "in_memory": [], "resume": [], "two_targets": None}
    ck, mem = b.preset("ckpt", "checkpoint", one), b.preset("mem", "in_memory", one)
    for i in range(a.reps):
        say(f"overhead rep {i + 1}/{a.reps}")
        b.clean("ckpt")
        m = b.cml(ck)
        m["disk_bytes"] = du(work / "runs" / "ckpt")
        r["overhead"]["cml"].append(m)
        b.clean("ckpt")
        r["overhead"]["direct"].append(b.direct(ck))
        say(f"in_memory rep {i + 1}/{a.reps}")
        b.clean("mem")
        m = b.cml(mem)
        m["disk_bytes"] = du(work / "runs" / "mem")
        r["in_memory"].append(m)

    say("two targets on one copy machine")
    multi = b.preset("multi", "checkpoint", two)
    r["two_targets"] = b.cml(multi)
    for i in range(a.reps):
        say(f"resume rep {i + 1}/{a.reps}")
        steps = a.diff_steps + 1 + i % 2  # a different setting each time, for one target only
        changed = b.preset("multi", "checkpoint", {**two, "invert": {"transform": "invert", "train": {"steps": steps}}})
        m = b.cml(changed, "--force")
        ran = json.loads((work / "runs" / "multi" / "run.json").read_text())["stages_run"]
        assert ran == ["diff-invert"], ran
        r["resume"].append(m)

    full = med(r["overhead"]["cml"])
    res: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": versions(b.sd),
        "settings": {"reps": a.reps, "copy_steps": a.copy_steps, "diff_steps": a.diff_steps, "resolution": 64, "model": "the SD1.5-architecture demo model"},
        "overhead": {"cml_s": full, "direct_s": med(r["overhead"]["direct"]), "ratio": full / med(r["overhead"]["direct"])},
        "merge_modes": {
            "checkpoint": {
                "s": full,
                "peak_rss_gib": med(r["overhead"]["cml"], "peak_rss_kib") / 2**20,
                "disk_gib": med(r["overhead"]["cml"], "disk_bytes") / 2**30,
            },
            "in_memory": {
                "s": med(r["in_memory"]),
                "peak_rss_gib": med(r["in_memory"], "peak_rss_kib") / 2**20,
                "disk_gib": med(r["in_memory"], "disk_bytes") / 2**30,
            },
        },
        "resume": {
            "changed_one_target_s": med(r["resume"]),
            "full_two_target_run_s": r["two_targets"]["seconds"],
            "ratio": med(r["resume"]) / r["two_targets"]["seconds"],
        },
        "many_targets": {
            "k": 2,
            "one_copy_machine_s": r["two_targets"]["seconds"],
            "separate_pipelines_s": 2 * full,
            "ratio": r["two_targets"]["seconds"] / (2 * full),
        },
        "gpu": gpu_note(),
        "raw": r,
    }
    res["merge_modes"]["time_ratio_in_memory_vs_checkpoint"] = res["merge_modes"]["in_memory"]["s"] / full
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    (a.out / "results.md").write_text(markdown(res))
    shutil.rmtree(work, ignore_errors=True)
    print((a.out / "results.md").read_text())
    return 0


def versions(sd) -> dict:
    import torch

    from cml import __version__

    return {"cml": __version__, "torch": torch.__version__, "sd_scripts": sd.commit}


def gpu_note() -> str:
    from cml.device import probe

    gpu = probe(check_bnb=False).gpu
    if gpu is not None:
        return f"CUDA available ({gpu.name}): `make bench-gpu` measures the article's recipe on it"
    return "not measured here (no CUDA GPU): `make bench-gpu` on a CUDA machine, see bench/results-gpu.md"


def markdown(r: dict) -> str:
    o, m, rs, mt = r["overhead"], r["merge_modes"], r["resume"], r["many_targets"]
    s = r["settings"]
    return f"""# cml benchmarks

Machine: {r["machine"]["platform"]}, {r["machine"]["cpus"]} CPUs, Python {r["machine"]["python"]}; torch {r["versions"]["torch"]};
sd-scripts {str(r["versions"]["sd_scripts"])[:10]}; cml {r["versions"]["cml"]}.
Workload: {s["model"]} checkpoint, {s["resolution"]} px, copy {s["copy_steps"]} steps, diff {s["diff_steps"]} steps, CPU.
Medians of {s["reps"]} runs, all in one `make bench` run.

| measure | value | ratio |
|---|---|---|
| overhead: `cml run` vs the same sd-scripts commands run directly | {o["cml_s"]:.1f} s vs {o["direct_s"]:.1f} s | **{o["ratio"]:.3f}** (goal <= 1.03) |
| merge modes, wall time: in_memory vs checkpoint | {m["in_memory"]["s"]:.1f} s vs {m["checkpoint"]["s"]:.1f} s | **{m["time_ratio_in_memory_vs_checkpoint"]:.3f}** |
| merge modes, peak RSS: in_memory vs checkpoint | {m["in_memory"]["peak_rss_gib"]:.1f} GiB vs {m["checkpoint"]["peak_rss_gib"]:.1f} GiB | {m["in_memory"]["peak_rss_gib"] / m["checkpoint"]["peak_rss_gib"]:.3f} |
| merge modes, disk written: in_memory vs checkpoint | {m["in_memory"]["disk_gib"]:.3f} GiB vs {m["checkpoint"]["disk_gib"]:.3f} GiB | {m["in_memory"]["disk_gib"] / m["checkpoint"]["disk_gib"]:.3f} |
| resume: change one target's setting, re-run vs the full 2-target run | {rs["changed_one_target_s"]:.1f} s vs {rs["full_two_target_run_s"]:.1f} s | **{rs["ratio"]:.3f}** |
| many targets: 2 targets on one copy machine vs 2 separate pipelines | {mt["one_copy_machine_s"]:.1f} s vs {mt["separate_pipelines_s"]:.1f} s | **{mt["ratio"]:.3f}** |

GPU: {r["gpu"]}.
"""


if __name__ == "__main__":
    sys.exit(main())
