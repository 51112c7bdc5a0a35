"""`make bench-gpu`: the article's recipe on a CUDA GPU, measured from outside the trainer.

Runs, each one `cml run presets/grayscale.toml` (the article's settings as shipped) on a checkpoint built
once (SD1.5: the demo model of cml/sd_process/demo_model.py; SDXL: random weights), with image A at the training
resolution:
- ``sd15``: SD1.5 at 512 px, 500 steps per stage, checkpoint merge;
- ``sd15-in-memory``: the same with ``merge = "in_memory"``;
- ``sdxl``: SDXL at 1024 px, checkpoint merge, fewer steps (memory and speed per step).

How it measures:
- stage boundaries: cml's own "[i/n] stage" lines, time-stamped as they arrive;
- training loop: the trainer's own progress bar ("steps: k/N"), time-stamped as it arrives; set-up is
  the time from the stage's start to its first step (model load, latents), the tail from its last step
  to the stage's end (saving, cml's output checks);
- peak GPU memory: `nvidia-smi --query-gpu=memory.used -lms 100` samples the device every 100 ms; a
  stage's peak is its highest sample minus the memory in use before the run. It includes the CUDA
  context and PyTorch's cached blocks: what a card must hold;
- cml's own process: its /proc/PID/maps is sampled every 0.3 s for libcuda (no CUDA context without it).
Writes bench/results-gpu.json and bench/results-gpu.md. tests/gpu asserts on the same runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from cml.dev import root

ROOT = root()
STAGE = re.compile(r"^cml: \[(\d+)/(\d+)\] (\S+): (.*)$")
BAR = re.compile(r"steps:.*?(\d+)/(\d+) \[")
# What the trainer prints when it runs as asked (sd-scripts at the pinned commit).
LOG_MARKERS = {
    "device_cuda": "accelerator device: cuda",
    "adamw8bit": "use 8-bit AdamW optimizer",
    "sdpa": "Enable SDPA for U-Net",
}
UNET_DTYPE = re.compile(r"unet dtype: torch\.(\w+), device: (\S+)")


class GpuMonitor:
    """Device memory in use, sampled by nvidia-smi every 100 ms (no CUDA context in this process)."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None  # stdout=PIPE
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), int(float(line.strip()))))
            except ValueError:
                pass

    def peak(self, t0: float, t1: float) -> int | None:
        xs = [m for t, m in self.samples if t0 <= t <= t1]
        return max(xs) if xs else None

    def now(self) -> int | None:
        time.sleep(0.3)
        return self.samples[-1][1] if self.samples else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def watch_libcuda(pid: int, found: list[str], stop: threading.Event) -> None:
    maps = Path(f"/proc/{pid}/maps")
    while not stop.is_set():
        try:
            text = maps.read_text()
        except OSError:
            return
        for ln in text.splitlines():
            if "libcuda" in ln:
                found.append(ln.split()[-1])
                return
        stop.wait(0.3)


def stage_entry(run_dir: Path, st: str, d: dict, mon: GpuMonitor | None, idle: int | None) -> dict:
    """One finished stage: wall time, set-up, loop and tail from the time-stamped output; peak memory; losses."""
    e: dict = {"wall_s": d["end"] - d["start"]}
    steps = d["steps"]
    if len(steps) >= 2:
        (s0, t0), (s1, t1) = steps[0], steps[-1]
        e.update(steps=s1, setup_s=t0 - d["start"], loop_s=t1 - t0, it_per_s=(s1 - s0) / (t1 - t0) if t1 > t0 else None, tail_s=d["end"] - t1)
    if mon:
        peak = mon.peak(d["start"], d["end"])
        e["peak_gpu_mib"] = peak
        e["peak_gpu_mib_over_idle"] = peak - idle if peak is not None and idle is not None else None
    rec = json.loads((run_dir / st / "record.json").read_text())
    if "losses" in rec:
        e["losses_finite"] = all(math.isfinite(x) for x in rec["losses"]) and bool(rec["losses"])
        e["early_loss"] = rec.get("early_loss")
    return e


# Settings that name files of this machine: left out of the results, which are committed.
MACHINE_PATHS = ("base_model", "source", "tokenizer_cache_dir", "output_dir")


def write_preset(work: Path, name: str, settings: dict, preset: str = "grayscale") -> Path:
    """A shipped preset (the article's recipe: grayscale), with this run's settings, as a preset file of the run."""
    import tomllib

    import tomli_w

    from cml.preset import shipped_presets

    data = tomllib.loads(shipped_presets()[preset].read_text(encoding="utf-8"))
    for key, value in settings.items():
        node = data
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    data["name"] = name
    path = work / f"{name}.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def run_cml(
    name: str, settings: dict, work: Path, out: Path, mon: GpuMonitor | None, res: dict, save, env: dict | None = None, preset: str = "grayscale"
) -> None:
    """One `cml run`, its output time-stamped line by line, into ``res``; ``save()`` after every finished stage."""
    argv = [sys.executable, "-m", "cml", "run", str(write_preset(work, name, settings, preset))]
    run_dir = work / "runs" / name
    idle = mon.now() if mon else None
    t_launch = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=work, env=env)
    cuda_maps: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_libcuda, args=(proc.pid, cuda_maps, stop), daemon=True)
    watcher.start()
    res.update(
        {
            "run_dir": os.path.relpath(run_dir, out),  # from the results file's folder
            "settings": {k: v for k, v in settings.items() if k not in MACHINE_PATHS and not k.startswith("model_files.")},
            "idle_mib": idle,
            "cml_libcuda": cuda_maps,
            "stages": {},
            "finished": False,
        }
    )
    stages: dict[str, dict] = {}
    current: str | None = None
    out_lines: list[str] = []
    pending = ""
    assert proc.stdout is not None  # stdout=PIPE
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        now = time.monotonic()
        pending += chunk.decode("utf-8", "replace")
        *lines, pending = re.split(r"[\r\n]", pending)
        for line in lines:
            if not line.strip():
                continue
            m = STAGE.match(line)
            if m:
                out_lines.append(line)
                print(f"bench-gpu: {name}: {line[5:]}", file=sys.stderr, flush=True)
                st, rest = m.group(3), m.group(4)
                if rest.startswith("done in"):
                    stages[st]["end"] = now
                    current = None
                    res["stages"][st] = stage_entry(run_dir, st, stages[st], mon, idle)
                    res["before_first_stage_s"] = min(d["start"] for d in stages.values()) - t_launch
                    save()
                elif not rest.startswith("up to date"):
                    stages[st] = {"start": now, "steps": []}
                    current = st
                continue
            b = BAR.search(line)
            if b and current is not None:
                step = int(b.group(1))
                seen = stages[current]["steps"]
                if step > 0 and (not seen or step > seen[-1][0]):
                    seen.append((step, now))
            elif "error" in line or "Traceback" in line:
                out_lines.append(line)
    rc = proc.wait()
    stop.set()
    res["wall_s"] = time.monotonic() - t_launch
    if rc != 0:
        res["failed"] = out_lines[-30:]
        save()
        raise SystemExit(f"bench-gpu: {name}: cml run failed (exit {rc}):\n" + "\n".join(out_lines[-30:]))
    res["finished"] = True
    save()


def build_models(families: list[str]) -> dict[str, str]:
    """The demo checkpoints, built once into cml's cache (each in a child process: torch stays out of this one)."""
    from cml.demo import demo_sd15_checkpoint, random_sdxl_checkpoint, tokenizer_dir
    from cml.sdscripts import locate

    t = time.monotonic()
    sd = locate()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    out: dict = {"tokenizer": str(tokenizer_dir())}
    if "sd15" in families:
        out["sd15"] = str(demo_sd15_checkpoint(sd.path, log=log))
    if "sdxl" in families:
        out["sdxl"] = str(random_sdxl_checkpoint(sd.path, log=log))
    if "flux" in families:  # a full-size FLUX.1 dev (19 + 38 blocks, 12B) with random weights, built here
        from cml.demo import toy_model, toy_tokenizers

        out["flux"] = str(toy_model("flux-full", sd.path, log=log))
        out["flux_tokenizer"] = str(toy_tokenizers(sd.path))
    out["build_s"] = time.monotonic() - t
    return out


def device_facts() -> dict:
    from cml.device import probe

    pr = probe()
    facts: dict = {"torch": pr.torch, "torch_cuda": pr.torch_cuda, "cuda_error": pr.error}
    if pr.gpu:
        g = pr.gpu
        facts.update(name=g.name, total_gib=g.total_memory / 2**30, capability=list(g.capability), bf16=g.bf16, adamw8bit_error=g.bnb_error)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        facts["driver"] = smi.stdout.strip()
    except OSError:
        pass
    return facts


# The runs, each a `cml run` of the shipped grayscale preset (the article's recipe) with these settings; `--only`
# picks some, so that a lease whose commands stop at 10 minutes runs them in parts. SD1.5 at --resolution, SDXL apart.
RUNS: dict[str, dict] = {
    "sd15": {},  # as shipped: cml's exact cuts on (speedups, the default)
    "sd15-sd-scripts": {"speedups": False},  # the same through train_network.py itself: what the exact cuts are worth
    "sd15-in-memory": {"merge": "in_memory"},
    "sd15-in-memory-lowram": {"merge": "in_memory", "train.extra": {"lowram": True}},  # models loaded and merged on the GPU
    "sd15-batch4": {"train.batch_size": 4, "train.steps": 125},  # the article's hint: its image samples in 1/4 the steps
    "sd15-compile": {"train.torch_compile": True},  # sd-scripts' --torch_compile, an empty compile cache (cold)
    "sd15-compile-warm": {"train.torch_compile": True},  # the cache the cold run left
    "sd15-fast": {"preset": "fast"},  # the fast preset as shipped
    "sd15-profile": {"merge": "in_memory", "train.steps": 30},  # torch.profiler over 10 steps of each stage
    "sdxl": {},
    "flux": {},  # FLUX.1 dev at full size (random weights) at 1024 px: flux_train_network.py, flux_merge_lora.py
}
DEFAULT_RUNS = [
    "sd15",
    "sd15-sd-scripts",
    "sd15-in-memory",
    "sd15-in-memory-lowram",
    "sd15-batch4",
    "sd15-compile",
    "sd15-compile-warm",
    "sd15-fast",
    "sd15-profile",
    "sdxl",
    "flux",
]
PROFILED_STEPS = 10  # 50 took 3 minutes and 9 GB to summarise on the CPU (45,000 events a step)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench", help="where results-gpu.json/.md go")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work-gpu", help="run folders and images")
    ap.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these")
    ap.add_argument("--steps", type=int, default=None, help="SD1.5 steps per stage (default: the preset's, 500)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--sdxl-steps", type=int, default=30)
    ap.add_argument("--sdxl-resolution", type=int, default=1024)
    ap.add_argument("--device", default="auto", help="preset device (cpu only to try the harness without a GPU)")
    a = ap.parse_args(argv)
    runs = a.only or DEFAULT_RUNS
    say = lambda m: print(f"bench-gpu: {m}", file=sys.stderr, flush=True)  # noqa: E731
    a.work.mkdir(parents=True, exist_ok=True)  # the run folders of other parts stay: tests/gpu reads them
    t0 = time.monotonic()
    dev = device_facts()
    say(f"device: {dev.get('name', 'no CUDA GPU')} ({dev.get('torch')}, CUDA {dev.get('torch_cuda')})")
    if not dev.get("name") and a.device != "cpu":
        why = dev.get("cuda_error") or "torch sees none"
        raise SystemExit(f"bench-gpu: no CUDA GPU here ({why}): run it on a CUDA machine (--device cpu only tries the harness, at small --steps)")
    models = build_models(sorted({r if r in ("sdxl", "flux") else "sd15" for r in runs}))
    say(f"demo checkpoints ready in {models['build_s']:.0f} s")
    from cml.demo import demo_image

    mon = GpuMonitor() if shutil.which("nvidia-smi") and dev.get("name") else None
    results: dict = {"device": dev, "models_build_s": models["build_s"], "runs": earlier_runs(a.out / "results-gpu.json", dev)}
    try:
        for r in runs:
            fam = r if r in ("sdxl", "flux") else "sd15"
            res = a.sdxl_resolution if fam in ("sdxl", "flux") else a.resolution
            img = a.work / f"a-{res}.png"
            if not img.exists():
                demo_image(res).save(img)
            settings: dict = {
                "base_model": models[fam],
                "source": str(img),
                "tokenizer_cache_dir": models["tokenizer"],
                "output_dir": str(a.work / "runs"),
                "device": a.device,
                "train.resolution": res,
            }
            if fam == "sdxl":
                settings["train.steps"] = a.sdxl_steps
            if fam == "flux":
                flux = Path(models["flux"])
                settings |= {"base_model": str(flux / "flux.safetensors"), "tokenizer_cache_dir": models["flux_tokenizer"], "train.steps": a.sdxl_steps}
                settings |= {f"model_files.{k}": str(flux / f"{k}.safetensors") for k in ("clip_l", "t5xxl", "ae")}
            elif a.steps:
                settings["train.steps"] = a.steps
            settings.update(RUNS[r])
            if r == "sd15-batch4" and a.steps:  # batch 4: the same image samples in 1/4 the steps
                settings["train.steps"] = max(1, a.steps // 4)
            env = dict(os.environ)
            compile_cache = a.out / "torch-compile"  # its own, so that the cold run is cold
            if r == "sd15-compile":
                shutil.rmtree(compile_cache, ignore_errors=True)
            env.update(TORCHINDUCTOR_CACHE_DIR=str(compile_cache / "inductor"), TRITON_CACHE_DIR=str(compile_cache / "triton"))
            if r == "sd15-profile":
                env["CML_PROFILE"] = f"{a.work / 'profile-STAGE.json'}:{PROFILED_STEPS}"
            preset = settings.pop("preset", "grayscale")
            say(f"{r}: cml run {preset} ({res} px)")
            results["runs"][r] = {}
            shutil.rmtree(a.work / "runs" / r, ignore_errors=True)  # this run afresh
            # written after every stage: a run cut short (time limit, failure) keeps what was measured
            run_cml(r, settings, a.work, a.out, mon, results["runs"][r], lambda: write_results(a.out, results, t0), env=env, preset=preset)
            if r == "sd15-profile":
                results["runs"][r]["profile"] = {f.stem.removeprefix("profile-"): json.loads(f.read_text()) for f in sorted(a.work.glob("profile-*.json"))}
                write_results(a.out, results, t0)
    finally:
        if mon:
            mon.stop()
    write_results(a.out, results, t0)
    print((a.out / "results-gpu.md").read_text())
    return 0


def earlier_runs(path: Path, dev: dict) -> dict:
    """The runs an earlier part measured on this same device (bench-gpu runs in parts where commands are short)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = earlier.get("device", {}).get("name") == dev.get("name") and earlier.get("device", {}).get("torch") == dev.get("torch")
    return dict(earlier.get("runs", {})) if same else {}


def write_results(out: Path, results: dict, t0: float) -> None:
    results["total_s"] = time.monotonic() - t0
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results-gpu.json").write_text(json.dumps(results, indent=2))
    (out / "results-gpu.md").write_text(markdown(results))


def _f(x, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def pipeline_seconds(run: dict, names: tuple[str, ...] = ("copy", "merge", "diff-grayscale")) -> float:
    """cml's start (input checks, device probe) plus the copy, merge and diff stages."""
    return run["before_first_stage_s"] + sum(run["stages"][n]["wall_s"] for n in names if n in run["stages"])


def markdown(r: dict) -> str:
    d = r["device"]
    lines = [
        "# cml on a GPU (`make bench-gpu`)",
        "",
        f"Device: **{d.get('name', 'no CUDA GPU')}** ({_f(d.get('total_gib'), '.0f')} GiB, compute capability "
        f"{'.'.join(map(str, d.get('capability', []))) or '-'}), driver {d.get('driver', '-')}; torch {d.get('torch')} (CUDA {d.get('torch_cuda')}); "
        f"{r['machine']['cpus']} CPUs, Python {r['machine']['python']}.",
        f"Random-weight checkpoints (built in {r['models_build_s']:.0f} s); one run of each; all figures from this one `make bench-gpu`.",
        "",
        "| run | stage | wall s | set-up s | steps | loop s | it/s | tail s | peak GPU GiB (over idle) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in r["runs"].items():
        if "before_first_stage_s" in run:
            lines.append(f"| {name} | start (checks, device probe) | {run['before_first_stage_s']:.1f} | | | | | | |")
        for st, e in run["stages"].items():
            peak = e.get("peak_gpu_mib_over_idle")
            lines.append(
                f"| {name} | {st} | {e['wall_s']:.1f} | {_f(e.get('setup_s'))} | {e.get('steps', '')} | {_f(e.get('loop_s'))} | "
                f"{_f(e.get('it_per_s'), '.2f')} | {_f(e.get('tail_s'))} | {_f(None if peak is None else peak / 1024, '.2f')} |"
            )
        if run.get("finished"):
            lines.append(f"| {name} | **whole `cml run`** | **{run['wall_s']:.1f}** | | | | | | |")
        else:
            lines.append(f"| {name} | **cut short** (stages above finished) | | | | | | | |")
    lines.append("")
    sd = r["runs"].get("sd15")
    if sd and sd.get("finished"):
        lines.append(f"SD1.5 pipeline (start + copy + merge + diff): **{pipeline_seconds(sd):.1f} s** (goal: 90 s on an H100-class GPU).")
    for name, run in r["runs"].items():
        if name.startswith("sd15") and name != "sd15-profile" and run.get("finished"):
            lines.append(
                f"- {name} ({', '.join(f'{k}={v}' for k, v in run['settings'].items() if k not in ('device', 'train.resolution')) or 'as shipped'}): "
                f"pipeline (start + copy + merge + diff) **{pipeline_seconds(run):.1f} s**"
            )
    prof = r["runs"].get("sd15-profile", {}).get("profile", {})
    if prof:
        lines += [
            "",
            f"torch.profiler, per training step ({PROFILED_STEPS} steps after 12 of warm-up):",
            "",
            "| stage | wall ms | host ms in tensor ops | host ms outside them | device busy ms | device busy share | host events | costliest on the host | costliest on the device |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for st, p in prof.items():
            top_h, top_d = p["top_host"][0], p["top_device"][0]
            lines.append(
                f"| {st} | {p['wall_ms_per_step']:.1f} | {p['host_op_ms_per_step']:.1f} | {p['host_other_ms_per_step']:.1f} | {p['device_ms_per_step']:.1f} | "
                f"{_f(p['device_busy'], '.2f')} | {p['host_events_per_step']:.0f} | {top_h['op']} {top_h['ms_per_step']:.1f} ms | {top_d['op']} {top_d['ms_per_step']:.1f} ms |"
            )
        lines.append("")
    libcuda = {n: bool(run["cml_libcuda"]) for n, run in r["runs"].items()}
    lines.append(f"cml's own process mapped libcuda: {', '.join(f'{n}: {v}' for n, v in libcuda.items())} (false = no CUDA context in cml).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
