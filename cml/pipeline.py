"""Executing a plan: run each stage that is not up to date as an sd-scripts subprocess, validate its output,
add provenance, and record what it was made from (cml/resume.py decides what is up to date)."""

from __future__ import annotations

import shlex
import shutil
import time

from cml.console import StageProgress, fmt_seconds, say
from cml.errors import InputError, StageFailed
from cml.finish import adopt, finish_output, keep_extra_files, note_produced, produced_note, record_of, validate_produced
from cml.model_files import known_sha256
from cml.plan import Plan, Stage
from cml.prerun import cpu_warning, disk_check, gpu_memory_note, memory_note
from cml.records import RunSummary, SdScriptsInfo, StageRecord, read
from cml.render.run_folder import render, stage_images
from cml.render.scripts import script_label, stage_argv
from cml.resume import Decision, RunOptions, check_options, decide, read_record, redo_verb, stale_inputs
from cml.rundir import disk_space, mark, remove_inside
from cml.runner import LossNotFinite, Progress, RunLock, indented, run_logged
from cml.sdscripts import SdScripts, python_env
from cml.tensorboard_log import read_losses


def diverged_cause(plan: Plan, stage: Stage, step: int) -> str:
    s = stage.train
    if step <= 1:
        return "at the very first step, before any update: the model gives non-finite values on these inputs (a damaged model, or fp16 overflow)"
    if s.precision == "fp16":
        vae = " (for SDXL, also its VAE)" if plan.inputs.family == "sdxl" else ""
        return f"likely cause: fp16 overflow{vae}, or the learning rate {s.learning_rate:g} is too high for this model"
    return f"likely cause: the learning rate {s.learning_rate:g} is too high for this model or data"


def diverged_fix(plan: Plan, stage: Stage, step: int) -> str:
    s = stage.train
    if step <= 1:
        return 're-download or re-export the base model (a NaN there cannot train), or try precision = "fp32"'
    if s.precision == "fp16":
        return (
            'set train.precision = "fp32" (or "bf16" on GPUs of compute capability 8.0+), or lower train.learning_rate; then re-run: finished stages are kept'
        )
    return "lower train.learning_rate (e.g. to a third), then re-run the same command: finished stages are kept"


def run_stage(plan: Plan, sd: SdScripts, stage: Stage, opts: RunOptions, lock: RunLock, inputs: dict[str, tuple[str, str]]) -> StageRecord:
    produced = stage.work_dir / stage.output.name
    argv = stage_argv(plan, stage)
    adopted = produced_note(stage, produced)
    if adopted is not None:
        say(f"        {produced.relative_to(plan.run_dir)} was made and checked by an earlier attempt that could not finish: adopted, not made again")
        facts, seconds = adopted["facts"], float(adopted.get("seconds", 0.0))
    else:
        facts, seconds = run_script(plan, sd, stage, opts, lock, argv)
    with disk_space(stage.output.name, stage.dir, keep=f"; the checked output is kept in {stage.work_dir} and is taken up by the next run"):
        if adopted is None:
            note_produced(stage, produced, facts, seconds)
        extra = keep_extra_files(plan, stage, produced)
        finish_output(plan, stage, produced, facts)
        losses = read_losses(stage.dir / "logs") if stage.kind == "train" else []
        remove_inside(stage.work_dir, plan.run_dir)
        kept = {k: v for k, v in facts.items() if k in ("lora_modules", "merge_check", "markers_kept")}
        rec = record_of(plan, stage, inputs, seconds=round(seconds, 1), argv=argv, losses=[v for _, v in losses], extra_files=extra, **kept)
    return rec


def run_script(plan: Plan, sd: SdScripts, stage: Stage, opts: RunOptions, lock: RunLock, argv: list[str]) -> tuple[dict, float]:
    """Run the stage's sd-scripts script into a fresh work/ folder; the validated facts and the seconds it took."""
    if stage.kind == "merge":
        disk_check(plan, stage)
        memory_note(plan, stage)
    with disk_space(f"{stage.name}'s files", stage.dir):
        for old in (stage.work_dir, stage.dir / "logs", stage.record_path):
            if old.exists() or old.is_symlink():
                remove_inside(old, plan.run_dir)  # the stage is being redone: its old record no longer describes an output
        if stage.kind == "train":
            for folder in (stage.images_dir, stage.images_a_dir):
                if folder.exists():
                    remove_inside(folder, plan.run_dir)
            stage_images(plan, stage)  # exactly what the fingerprint names, no caches of earlier inputs
        stage.work_dir.mkdir(parents=True)
        if stage.log_path.exists():
            stage.log_path.replace(stage.log_path.with_name("log.prev.txt"))
    progress = StageProgress(stage.name, opts.mode)

    def on_progress(p: Progress) -> None:
        progress.update(p.step, p.total, p.loss, p.remaining)

    if opts.mode == "verbose":
        say(f"        $ (cd {shlex.quote(str(sd.path))} && {shlex.join(argv)})")
    if plan.inputs.device == "cuda" and stage.kind == "train":
        gpu_memory_note(plan)
    try:
        res = run_logged(
            argv,
            sd.path,
            python_env(sd, known_sha256([plan.inputs.model.path]) if stage.kind == "train" else None),
            stage.log_path,
            stream=opts.mode == "verbose",
            on_progress=on_progress,
            progress_marker="steps:" if stage.kind == "train" else "",
            keep_fds=(lock.fd,) if lock.fd is not None else (),
            on_start=lock.note_trainer,
        )
    except LossNotFinite as e:
        progress.close()
        raise StageFailed(
            f"stage {stage.name} stopped: {e}; {diverged_cause(plan, stage, e.step)}", where=str(stage.log_path), fix=diverged_fix(plan, stage, e.step)
        ) from None
    finally:
        progress.close()
        lock.note_trainer(None)
    produced = stage.work_dir / stage.output.name
    if res.returncode != 0:
        tail = indented(res.tail, 15)
        fix = "fix the cause and re-run the same command: finished stages are kept"
        if res.returncode == -9:
            fix = "it was killed (SIGKILL), most often by the kernel for lack of memory: free memory or lower the resolution, then re-run the same command"
        elif any("ModuleNotFoundError" in ln or "ImportError" in ln for ln in res.tail):
            fix = "sd-scripts' dependencies are broken in this Python: run `make setup` (or `cml setup --deps`); `cml doctor` lists what is missing"
        elif any("No space left on device" in ln for ln in res.tail):
            raise InputError(
                f"the disk is full: stage {stage.name}'s script could not write ({shutil.disk_usage(stage.dir).free / 2**20:.0f} MiB free)",
                str(stage.log_path),
                "free space (or set output_dir on another disk), then re-run the same command: finished stages are kept",
            )
        raise StageFailed(
            f"stage {stage.name} failed: {script_label(argv)} exited with code {res.returncode}\n  last log lines:\n{tail}\n  full log: {stage.log_path}",
            fix=fix,
        )
    if not produced.exists():
        raise StageFailed(f"stage {stage.name}: {script_label(argv)} exited 0 but wrote no {produced.name}", fix=f"see {stage.log_path}")
    return validate_produced(plan, stage, produced), res.seconds


def ids(rec: StageRecord) -> tuple[str, str]:
    """(file sha256, tensors' sha256) of a record's output; a record of cml 0.1 has the file's only."""
    return rec.output_sha256, rec.output_content or rec.output_sha256


def execute(plan: Plan, sd: SdScripts, opts: RunOptions, lock: RunLock, decision: Decision) -> tuple[list[str], list[str]]:
    """Run or skip each stage in order; (stages run, stages skipped)."""
    current: dict[str, tuple[str, str]] = {}  # stage -> (sha256 of its output, of its tensors) as it is now
    ran, skipped = [], []
    n = len(plan.stages)
    for i, (st, go, state) in enumerate(zip(plan.stages, decision.todo, decision.states), 1):
        rec = read_record(st)
        if not go:
            stale = stale_inputs(plan, st, rec, current)
            if stale:
                made = ", ".join(f"{plan.stage(d).output.relative_to(plan.run_dir)}" for d in stale)
                if st.protected and not opts.force:
                    raise InputError(
                        f"{made} was made again and differs from the one {st.output.relative_to(plan.run_dir)} was made from "
                        "(the stage is not deterministic here): this would replace finished work",
                        str(plan.run_dir),
                        "re-run with --force to make it again from the new file",
                    )
                say(f"{st.output.relative_to(plan.run_dir)} was made from an earlier {made}: it will be {redo_verb(st)}")
                go = True
        if not go:
            if state.adopt or rec is None:
                rec = adopt(plan, st, current)
            say(f"[{i}/{n}] {st.name}: up to date, skipped ({st.output})")
            current[st.name] = ids(rec)
            skipped.append(st.name)
            continue
        say(f"[{i}/{n}] {st.name}: {st.what}")
        say(f"        log: {st.log_path}")
        rec = run_stage(plan, sd, st, opts, lock, current)
        current[st.name] = ids(rec)
        ran.append(st.name)
        el = f", final loss {rec.losses[-1]:.4f}" if rec.losses else ""
        say(f"[{i}/{n}] {st.name}: done in {fmt_seconds(rec.seconds)}{el} -> {st.output}")
        for f in rec.extra_files:
            say(f"        also kept: {st.dir / f}")
    return ran, skipped


def run(plan: Plan, sd: SdScripts, opts: RunOptions, lock: RunLock | None = None) -> RunSummary:
    """Run the plan under the run folder's lock (``lock``: one the caller holds, e.g. for the check that follows)."""
    cpu_warning(plan)
    check_options(plan, opts)  # before the lock: a refused run leaves no folder behind
    if lock is None:
        with RunLock(plan.run_dir) as own:
            return run(plan, sd, opts, own)
    decision = decide(plan, opts)  # refusals come before anything is written
    with disk_space("the run's kohya files", plan.run_dir):
        render(plan, sd.path)
    if plan.preset.merge == "in_memory":
        say("merge: in memory (sd-scripts --base_weights); no copy machine model file is written")
    t0 = time.monotonic()
    ran, skipped = execute(plan, sd, opts, lock, decision)
    summary = RunSummary(
        run_id=mark(plan.run_dir).run_id,
        run_dir=str(plan.run_dir),
        seconds=round(time.monotonic() - t0, 1),
        stages_run=ran,
        stages_skipped=skipped,
        outputs={s.name: str(s.output) for s in plan.stages},
        kept_outputs={s.name: str(s.output) for s in plan.stages if s.result},
        sd_scripts=SdScriptsInfo(path=str(sd.path), commit=sd.commit, pinned=sd.pinned),
    )
    with disk_space("run.json", plan.run_dir):
        summary.write(plan.run_dir / "run.json")
    return summary


def read_summary(plan: Plan) -> RunSummary | None:
    return read(RunSummary, plan.run_dir / "run.json")
