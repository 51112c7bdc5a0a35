"""Executing a plan: skip what is up to date, run the rest, check every output, record what it was made from."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cml import __version__
from cml.checkpoint import model_identity, sha256_of
from cml.checks import CheckFailed, add_metadata, carry_marker_keys, check_lora, check_merged, dropped_markers, read_metadata
from cml.config import load_preset
from cml.device import gpu_memory
from cml.errors import InputError, StageFailed
from cml.files import atomic_path, atomic_write
from cml.inputs import load_inputs
from cml.kohya.options import check_extra
from cml.kohya.render import FIXED_NETWORK_MODULE, NETWORK_MODULE, SCRIPTS, default_tokenizer_cache, gui_problems, render, stage_argv, training_toml
from cml.losses import early_loss, read_losses
from cml.plan import Plan, Role, Stage, build_plan
from cml.rundir import check_run_dir
from cml.runner import LossNotFinite, Progress, RunLock, fmt_seconds, indented, run_logged
from cml.sdscripts import SUBMODULE, SdScripts, SdScriptsNotFound, check_tokenizers, commit_warning, locate, python_env


def say(msg: str) -> None:
    print(f"cml: {msg}", file=sys.stderr, flush=True)


def prepare(preset_path: Path, sets: list[str] | None, sd_option: str | None, *, for_check: bool = False, need_sd: bool = True) -> tuple[Plan, SdScripts]:
    """Config -> inputs -> plan. Every input check happens here, before anything runs or is written.

    need_sd=False (cml plan): without sd-scripts the plan names the submodule, and train.extra is not checked.
    """
    preset, digest = load_preset(preset_path, sets)
    try:
        sd = locate(sd_option)
    except SdScriptsNotFound:
        if need_sd:
            raise
        say("warning: sd-scripts not found; commands.sh assumes the sd-scripts/ submodule")
        sd = SdScripts(SUBMODULE, None, "not found", present=False)
    w = commit_warning(sd) if sd.present else None
    if w:
        say(w)
    inputs = load_inputs(preset)
    for n in inputs.notes:
        say(f"note: {n}")
    plan = build_plan(preset, digest, inputs, sd.commit)
    say(device_line(plan))
    for st in plan.stages:
        for n in st.notes:
            say(f"note: {st.name}: {n}")
    for problem in gui_problems(plan):
        say(f"warning: {problem}")
    for st in plan.stages:
        if st.settings is not None:
            training_toml(plan, st)  # train.extra against the options cml manages: refused now, not mid-run
    if sd.present:
        check_extra(plan, sd, SCRIPTS[plan.inputs.family]["train"].removesuffix(".py"))
    check_tokenizers(plan.inputs.family, plan.preset.tokenizer_cache_dir or default_tokenizer_cache())
    check_run_dir(plan.run_dir, preset_file=None if for_check else preset_path, inputs=input_files(plan.preset), sd_scripts=sd.path)
    return plan, sd


def input_files(preset) -> list[Path]:
    """The user's files a run reads: the run folder must not hold or contain them."""
    out = [*preset.source, preset.base_model, *preset.check.models]
    for t in preset.targets.values():
        out += t.images
    return out


def device_line(plan: Plan) -> str:
    """Where and how the training stages run, as the plan resolved it."""
    g = plan.inputs.gpu
    where = f"cuda ({g.describe()})" if g else plan.inputs.device
    train = [s for s in plan.stages if s.settings is not None]
    precs = sorted({s.train.precision for s in train})
    opts = sorted({s.train.optimizer for s in train})
    return f"device: {where}; precision {', '.join(precs)}; optimizer {', '.join(opts)}"


# ----------------------------------------------------------------- records


def read_record(stage: Stage) -> dict | None:
    try:
        return json.loads(stage.record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class OutputState:
    """What a stage's final file is, checked against its record (or, for a LoRA, against its own metadata)."""

    good: bool  # finished, undamaged, made from exactly this stage's inputs and settings
    why: str | None = None  # why not: missing | damaged (...) | made from other settings or inputs | no record
    intact: bool = False  # an undamaged finished file is there (replacing it loses work)
    adopt: bool = False  # good by its metadata, with no record: write one


def output_state(stage: Stage, plan: Plan) -> OutputState:
    out = stage.output
    if not out.is_file():
        return OutputState(False, "missing")
    rec = read_record(stage)
    if rec and rec.get("output_sha256"):
        size = out.stat().st_size
        if size < rec.get("output_size", 0):
            return OutputState(False, "damaged (truncated)")
        if size != rec.get("output_size") or sha256_of(out) != rec["output_sha256"]:
            return OutputState(False, "damaged (changed since it was made)")
        if rec.get("fingerprint") != stage.fingerprint:
            return OutputState(False, "made from other settings or inputs", intact=True)
        return OutputState(True, intact=True)
    if stage.kind == "merge":
        return OutputState(False, "not checked (no record of it)")
    # A LoRA without a usable record: its own metadata says what it was made from.
    try:
        meta = read_metadata(out)
    except Exception:
        return OutputState(False, "damaged (does not load)")
    if meta.get("cml_fingerprint") != stage.fingerprint:
        return OutputState(False, "made from other settings or inputs", intact=True)
    try:
        check_lora(out, *expected_rank(plan, stage))
    except CheckFailed as e:
        return OutputState(False, f"damaged ({e})")
    return OutputState(True, intact=True, adopt=True)


def expected_rank(plan: Plan, stage: Stage) -> tuple[int, float, bool]:
    """Rank and alpha the stage's LoRA must have, and whether resize_lora.py made it."""
    if stage.role is Role.RESIZE:
        assert stage.target is not None and plan.preset.resize_to is not None  # a resize stage exists only then
        s = plan.preset.diff_settings(stage.target)
        r = plan.preset.resize_to
        return r, s.alpha / s.dim * r, True  # resize_lora.py keeps alpha/dim
    return stage.train.dim, stage.train.alpha, False


def provenance(plan: Plan, stage: Stage) -> dict[str, str]:
    meta = {
        "cml_version": __version__,
        "cml_stage": stage.name,
        "cml_merge_mode": plan.preset.merge,
        "cml_preset_sha256": plan.preset_sha256,
        "cml_fingerprint": stage.fingerprint,
        "cml_base_model": plan.inputs.model.path.name,
        "cml_base_model_hash": model_identity(plan.inputs.model),
        "cml_images_sha256": json.dumps(stage.inputs_sha256, sort_keys=True),
        "cml_sd_scripts_commit": plan.sd_scripts_commit or "unknown",
        "cml_trained_against": stage.trained_against,
    }
    if stage.target:
        meta["cml_target"] = stage.target
    return meta


def finish_output(plan: Plan, stage: Stage, produced: Path) -> dict:
    """Check the produced file, add provenance, move it to its final name. Returns facts for the record."""
    facts: dict = {}
    try:
        if stage.kind == "merge":
            facts["merge_check"] = check_merged(produced, stage.model)
            # sd-scripts' merge drops the marker keys: other programs would load a v-pred model as epsilon
            dropped = dropped_markers(stage.model, produced, plan.inputs.model.markers) if plan.inputs.model.markers else []
            if dropped:
                with atomic_path(stage.output) as tmp:
                    carry_marker_keys(stage.model, produced, tmp, dropped)
                produced.unlink()
                facts["markers_kept"] = dropped
                return facts
            produced.replace(stage.output)
            return facts
        summary = check_lora(produced, *expected_rank(plan, stage))
    except CheckFailed as e:
        raise StageFailed(f"{stage.name}: output check failed: {e}", where=str(produced), fix=f"see {stage.log_path}") from None
    facts["lora_modules"] = summary.modules
    meta = provenance(plan, stage)
    if read_metadata(produced).get("ss_network_module") == FIXED_NETWORK_MODULE:
        # The file is a plain networks.lora LoRA; say which module trained it in cml's own key.
        meta["ss_network_module"] = NETWORK_MODULE
        meta["cml_network_module"] = FIXED_NETWORK_MODULE
    with atomic_path(stage.output) as tmp:
        add_metadata(produced, tmp, meta)
    produced.unlink()
    return facts


def write_record(stage: Stage, facts: dict) -> None:
    st = stage.output.stat()
    rec = {
        "stage": stage.name,
        "fingerprint": stage.fingerprint,
        "output": str(stage.output),
        "output_size": st.st_size,
        "output_sha256": sha256_of(stage.output),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **facts,
    }
    atomic_write(stage.record_path, json.dumps(rec, indent=2))


# ------------------------------------------------------------------- run


@dataclass
class RunOptions:
    mode: str = "normal"  # quiet | normal | verbose
    force: bool = False
    from_stage: str | None = None


def redo_verb(stage: Stage) -> str:
    return {"merge": "merged again", "resize": "made again"}.get(stage.kind, "trained again")


def stages_to_run(plan: Plan, opts: RunOptions) -> list[bool]:
    """Which stages run; refuses (before anything is written) to replace finished work without --force."""
    names = [s.name for s in plan.stages]
    if opts.from_stage is not None and opts.from_stage not in names:
        raise InputError(f"--from {opts.from_stage!r} is not a stage of this run", None, f"use one of: {', '.join(names)}")
    forced_from = names.index(opts.from_stage) if opts.from_stage else len(names)
    # --from re-runs those stages anyway: their outputs are not hashed (gigabytes for the copy machine model)
    states = [output_state(st, plan) if i < forced_from else OutputState(False, "--from") for i, st in enumerate(plan.stages)]
    todo = [i >= forced_from or not state.good for i, state in enumerate(states)]
    cause: dict[str, str] = {}  # stage -> why it runs again
    for i, (st, state) in enumerate(zip(plan.stages, states)):
        rel = st.output.relative_to(plan.run_dir)
        if i >= forced_from:
            cause[st.name] = f"--from {opts.from_stage}"
        elif state.why is not None and (state.why != "missing" or read_record(st) is not None):
            cause[st.name] = state.why
            if not state.intact:
                say(f"{rel} is {state.why}: it will be {redo_verb(st)}")
        # A stage whose input stage re-runs must re-run too (fingerprints chain, but --from and damage do not change them).
        up = next((plan.stage(d) for d in st.depends if d in names and todo[names.index(d)]), None)
        if up is not None:
            todo[i] = True
            why = f" ({cause[up.name]})" if up.name in cause else ""
            if i < forced_from and (state.why is None or state.intact):  # the upstream change is the cause (fingerprints chain)
                cause[st.name] = f"made from {up.output.relative_to(plan.run_dir)}, which will be {redo_verb(up)}{why}"
    if not opts.force:
        lost = [
            f"{st.output.relative_to(plan.run_dir)} ({cause.get(st.name, 'made from other settings or inputs')})"
            for i, (st, state) in enumerate(zip(plan.stages, states))
            if todo[i] and i < forced_from and st.kept and state.intact
        ]
        if lost:
            raise InputError(
                f"this would replace finished work: {'; '.join(lost)}",
                str(plan.run_dir),
                "re-run with --force to replace it, or set another name / output_dir",
            )
    for st, state, go in zip(plan.stages, states, todo):
        if state.adopt and not go:
            write_record(st, {"adopted": "found finished, with this stage's fingerprint in its metadata"})
    return todo


def disk_check(plan: Plan, stage: Stage) -> None:
    need = int(plan.inputs.model.size * 1.1)
    free = shutil.disk_usage(stage.dir).free
    if free < need:
        raise InputError(
            f"not enough disk space for the copy machine model: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free",
            str(stage.dir),
            'free space, set output_dir elsewhere, or use merge = "in_memory" (no merged file)',
        )


def available_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


# Peak RSS of merge_lora.py / sdxl_merge_lora.py per byte of an fp16 base checkpoint (measured: SD1.5 2.1 GB ->
# 9.2 GB, SDXL 6.9 GB -> 22.9 GB): the models, a converted state dict and the serialised file live at once.
MERGE_RAM_PER_BYTE = 3.4


def memory_note(plan: Plan, stage: Stage) -> None:
    need = int(plan.inputs.model.size * MERGE_RAM_PER_BYTE)
    free = available_memory()
    msg = f"the merge needs about {need / 2**30:.0f} GiB of RAM"
    if free is not None:
        msg += f"; {free / 2**30:.0f} GiB available"
    say(f"        {msg}")
    if free is not None and free < need:
        say('warning: the merge may be killed for lack of memory; merge = "in_memory" skips writing the copy machine model')


def gpu_memory_note(plan: Plan) -> None:
    mem = gpu_memory()
    if mem is None:
        return
    free, total = mem
    gpu = plan.inputs.gpu.name if plan.inputs.gpu else "GPU"
    say(f"        {gpu}: {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB free")


def diverged_cause(plan: Plan, stage: Stage) -> str:
    s = stage.train
    if s.precision == "fp16":
        vae = " (for SDXL, also its VAE)" if plan.inputs.family == "sdxl" else ""
        return f"likely cause: fp16 overflow{vae}, or the learning rate {s.learning_rate:g} is too high for this model"
    return f"likely cause: the learning rate {s.learning_rate:g} is too high for this model or data"


def diverged_fix(stage: Stage) -> str:
    s = stage.train
    if s.precision == "fp16":
        return (
            'set train.precision = "fp32" (or "bf16" on GPUs of compute capability 8.0+), or lower train.learning_rate; then re-run: finished stages are kept'
        )
    return "lower train.learning_rate (e.g. to a third), then re-run the same command: finished stages are kept"


def run_stage(plan: Plan, sd: SdScripts, stage: Stage, opts: RunOptions, lock_fd: int | None = None) -> dict:
    if stage.kind == "merge":
        disk_check(plan, stage)
        memory_note(plan, stage)
    shutil.rmtree(stage.work_dir, ignore_errors=True)
    stage.work_dir.mkdir(parents=True)
    if stage.record_path.exists():
        stage.record_path.unlink()  # the stage is being redone; its old record no longer describes a finished output
    if stage.log_path.exists():
        stage.log_path.replace(stage.log_path.with_name("log.prev.txt"))
    shutil.rmtree(stage.dir / "logs", ignore_errors=True)
    argv = stage_argv(plan, stage)
    last_report = [0.0]

    def on_progress(p: Progress) -> None:
        if opts.mode != "quiet":
            return
        now = time.monotonic()
        if p.step == p.total or now - last_report[0] > 15:
            last_report[0] = now
            loss = f"  loss {p.loss:.4f}" if p.loss is not None else ""
            say(f"  {stage.name}: step {p.step}/{p.total}{loss}  ETA {fmt_seconds(p.remaining)}")

    if opts.mode == "verbose":
        say(f"        $ (cd {shlex.quote(str(sd.path))} && {shlex.join(argv)})")
    if plan.inputs.device == "cuda" and stage.kind == "train":
        gpu_memory_note(plan)
    try:
        res = run_logged(
            argv,
            sd.path,
            python_env(sd),
            stage.log_path,
            opts.mode,
            on_progress,
            progress_marker="steps:" if stage.kind == "train" else "",
            keep_fds=(lock_fd,) if lock_fd is not None else (),
        )
    except LossNotFinite as e:
        raise StageFailed(f"stage {stage.name} stopped: {e}; {diverged_cause(plan, stage)}", where=str(stage.log_path), fix=diverged_fix(stage)) from None
    produced = stage.work_dir / stage.output.name
    if res.returncode != 0:
        tail = indented(res.tail, 15)
        fix = "fix the cause and re-run the same command: finished stages are kept"
        if res.returncode == -9:
            fix = "it was killed (SIGKILL), most often by the kernel for lack of memory: free memory or lower the resolution, then re-run the same command"
        elif any("ModuleNotFoundError" in ln or "ImportError" in ln for ln in res.tail):
            fix = "sd-scripts' dependencies are broken in this Python: run `make setup` (or `cml setup --deps`); `cml doctor` lists what is missing"
        raise StageFailed(
            f"stage {stage.name} failed: {Path(argv[1]).name} exited with code {res.returncode}\n  last log lines:\n{tail}\n  full log: {stage.log_path}",
            fix=fix,
        )
    if not produced.exists():
        raise StageFailed(f"stage {stage.name}: {Path(argv[1]).name} exited 0 but wrote no {produced.name}", fix=f"see {stage.log_path}")
    facts = finish_output(plan, stage, produced)
    facts["seconds"] = round(res.seconds, 1)
    facts["argv"] = argv
    if stage.kind == "train":
        losses = read_losses(stage.dir / "logs")
        facts["losses"] = [v for _, v in losses]
        facts["early_loss"] = early_loss(losses, plan.preset.baseline_steps)
    shutil.rmtree(stage.work_dir, ignore_errors=True)
    write_record(stage, facts)
    return facts


def method_check(plan: Plan) -> dict:
    """Early diff-stage loss against the copy machine model (and the plain base, with baseline)."""
    out = {}
    for st in plan.stages:
        if st.role is not Role.DIFF:
            continue
        rec = read_record(st) or {}
        entry = {"against_copy_machine": rec.get("early_loss")}
        if plan.preset.baseline:
            entry["against_base"] = (read_record(plan.stage(f"baseline-{st.target}")) or {}).get("early_loss")
        out[st.target] = entry
    return out


def run(plan: Plan, sd: SdScripts, opts: RunOptions) -> dict:
    if plan.inputs.device == "cpu":
        big = max(s.train.resolution * s.train.steps for s in plan.stages if s.settings is not None)
        if big >= 512 * 100:
            say("warning: training on the CPU; real runs (512 px, 500 steps) take hours here. A CUDA GPU takes minutes.")
    with RunLock(plan.run_dir) as lock:
        todo = stages_to_run(plan, opts)  # refusals come before anything is written
        render(plan, sd.path)
        n = len(plan.stages)
        if plan.preset.merge == "in_memory":
            say("merge: in memory (sd-scripts --base_weights); no copy machine model file is written")
        t0 = time.monotonic()
        for i, (st, go) in enumerate(zip(plan.stages, todo), 1):
            if not go:
                say(f"[{i}/{n}] {st.name}: up to date, skipped ({st.output})")
                continue
            say(f"[{i}/{n}] {st.name}: {st.what}")
            say(f"        log: {st.log_path}")
            facts = run_stage(plan, sd, st, opts, lock.fd)
            el = f", early loss {facts['early_loss']:.4f}" if facts.get("early_loss") is not None else ""
            say(f"[{i}/{n}] {st.name}: done in {fmt_seconds(facts['seconds'])}{el} -> {st.output}")
        summary = {
            "run_dir": str(plan.run_dir),
            "seconds": round(time.monotonic() - t0, 1),
            "stages_run": [s.name for s, go in zip(plan.stages, todo) if go],
            "stages_skipped": [s.name for s, go in zip(plan.stages, todo) if not go],
            "outputs": {s.name: str(s.output) for s in plan.stages},
            "kept_outputs": {s.name: str(s.output) for s in plan.stages if s.role in (Role.DIFF, Role.RESIZE)},
            "method_check": method_check(plan),
            "sd_scripts": {"path": str(sd.path), "commit": sd.commit, "pinned": sd.pinned},
        }
        (plan.run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return summary
