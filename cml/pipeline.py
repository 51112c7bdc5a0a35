"""Executing a plan: run each stage that is not up to date as an sd-scripts subprocess, validate its output,
add provenance, and record what it was made from (cml/resume.py decides what is up to date)."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cml import __version__
from cml.console import StageProgress, fmt_seconds, say
from cml.device import gpu_memory
from cml.errors import InputError, StageFailed
from cml.files import atomic_path
from cml.kohya.scripts import CML_NETWORK_MODULE, NETWORK_MODULE, script_label, stage_argv
from cml.kohya.write import render, stage_images
from cml.losses import early_loss, read_losses
from cml.model_files import model_identity, sha256_of
from cml.outputs import ValidationFailed, add_metadata, carry_marker_keys, dropped_markers, read_metadata, validate_copy_machine, validate_lora
from cml.plan import Plan, Role, Stage
from cml.records import RunSummary, SdScriptsInfo, StageRecord, read
from cml.resume import Decision, RunOptions, decide, expected_rank, read_record, redo_verb, stale_inputs
from cml.rundir import disk_full, mark, remove_inside
from cml.runner import LossNotFinite, Progress, RunLock, indented, run_logged
from cml.sdscripts import SdScripts, python_env

# Written beside a produced file in work/ once it passed validation: a re-run after a failure further on (a full
# disk) adopts the file instead of training again.
PRODUCED_NOTE = ".cml-produced.json"


def disk_check(plan: Plan, stage: Stage) -> None:
    need = int(plan.inputs.model.size * 1.1)
    free = shutil.disk_usage(stage.dir).free
    if free < need:
        raise InputError(
            f"not enough disk space for the copy machine model: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free",
            str(stage.dir),
            'free space, set output_dir elsewhere, or use merge = "in_memory" (no merged file)',
        )


@contextmanager
def disk_space(what: str, where: Path, keep: str = "") -> Iterator[None]:
    """A full disk while writing ``what`` becomes one line that names the place, the space left and the fix."""
    try:
        yield
    except OSError as e:
        if not disk_full(e):
            raise
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise InputError(
            f"the disk is full: {what} could not be written ({free}){keep}",
            str(getattr(e, "filename", None) or where),
            "free space (or set output_dir on another disk), then re-run the same command: finished stages are kept",
        ) from None


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
        "cml_method": "direct" if stage.role is Role.DIRECT else "copy_machine",
    }
    if stage.target:
        meta["cml_target"] = stage.target
    if stage.role is Role.DIRECT:
        d = plan.preset.direct
        meta["cml_direct_multiplier"] = f"{d.multiplier}"
        meta["cml_direct_timesteps"] = f"{d.timesteps[0]},{d.timesteps[1]}"
        meta["cml_direct_scaled"] = f"lora_up x {d.multiplier}: weight 1 gives what +{d.multiplier} gave in training; +1 moves A toward B"
    if stage.role is Role.SLIDER:
        meta["cml_slider"] = "(diff LoRA A->B - diff LoRA B->A) / 2, ranks stacked: +1 toward B, -1 toward A"
    return meta


def validate_produced(plan: Plan, stage: Stage, produced: Path) -> dict:
    """Validate what the script wrote; facts for the record."""
    try:
        if stage.kind == "merge":
            return {"merge_check": validate_copy_machine(produced, stage.model)}
        return {"lora_modules": validate_lora(produced, *expected_rank(plan, stage)).modules}
    except ValidationFailed as e:
        raise StageFailed(f"{stage.name}: output check failed: {e}", where=str(produced), fix=f"see {stage.log_path}") from None


def finish_output(plan: Plan, stage: Stage, produced: Path, facts: dict) -> None:
    """Give a validated output its provenance and final name; it is never seen half-written."""
    if stage.kind == "merge":
        # sd-scripts' merge drops the marker keys: other programs would load a v-pred model as epsilon
        dropped = dropped_markers(stage.model, produced, plan.inputs.model.markers) if plan.inputs.model.markers else []
        if dropped:
            with atomic_path(stage.output) as tmp:
                carry_marker_keys(stage.model, produced, tmp, dropped)
            produced.unlink()
            facts["markers_kept"] = dropped
        else:
            produced.replace(stage.output)
        return
    meta = provenance(plan, stage)
    if read_metadata(produced).get("ss_network_module") == CML_NETWORK_MODULE:
        # The file is a plain networks.lora LoRA (cml/kohya/lora.py); say which module trained it in cml's own key.
        meta["ss_network_module"] = NETWORK_MODULE
        meta["cml_network_module"] = CML_NETWORK_MODULE
    with atomic_path(stage.output) as tmp:
        add_metadata(produced, tmp, meta)
    produced.unlink()


def keep_extra_files(plan: Plan, stage: Stage, produced: Path) -> list[str]:
    """Files the trainer wrote besides the output (train.extra's sample images, intermediate saves) move to
    <stage>/extra/: work/ is deleted, and they are what the user asked for."""
    extra_dir = stage.dir / "extra"
    if extra_dir.exists():
        remove_inside(extra_dir, plan.run_dir)
    moved = []
    for entry in sorted(stage.work_dir.iterdir()):
        if entry == produced or entry.name == PRODUCED_NOTE:
            continue
        extra_dir.mkdir(exist_ok=True)
        entry.replace(extra_dir / entry.name)
        moved.append(f"extra/{entry.name}")
    return moved


def produced_note(stage: Stage, produced: Path) -> dict | None:
    """The note of an output that passed validation in an earlier attempt of this same stage (see PRODUCED_NOTE)."""
    try:
        note = json.loads((stage.work_dir / PRODUCED_NOTE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("fingerprint") != stage.fingerprint or not produced.is_file():
        return None
    if produced.stat().st_size != note.get("size") or sha256_of(produced) != note.get("sha256"):
        return None
    return note


def run_stage(plan: Plan, sd: SdScripts, stage: Stage, opts: RunOptions, lock: RunLock, inputs: dict[str, str]) -> StageRecord:
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
            (stage.work_dir / PRODUCED_NOTE).write_text(
                json.dumps(
                    {"fingerprint": stage.fingerprint, "size": produced.stat().st_size, "sha256": sha256_of(produced), "facts": facts, "seconds": seconds}
                )
            )
        extra = keep_extra_files(plan, stage, produced)
        finish_output(plan, stage, produced, facts)
        losses = read_losses(stage.dir / "logs") if stage.kind == "train" else []
        st = stage.output.stat()
        rec = StageRecord(
            run_id=mark(plan.run_dir).run_id,
            stage=stage.name,
            fingerprint=stage.fingerprint,
            output=str(stage.output),
            output_size=st.st_size,
            output_sha256=sha256_of(stage.output),
            inputs={d: inputs[d] for d in stage.depends if d in inputs},
            seconds=round(seconds, 1),
            argv=argv,
            losses=[v for _, v in losses],
            early_loss=early_loss(losses, plan.preset.baseline_steps) if losses else None,
            extra_files=extra,
            **{k: v for k, v in facts.items() if k in ("lora_modules", "merge_check", "markers_kept")},
        )
        remove_inside(stage.work_dir, plan.run_dir)
        rec.write(stage.record_path)
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
            python_env(sd),
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


def method_check(plan: Plan) -> dict[str, dict[str, float | None]]:
    """Early diff-stage loss against the copy machine model (and the plain base, with baseline)."""
    out = {}
    for st in plan.stages:
        if st.role is not Role.DIFF or st.reverse:
            continue
        rec = read_record(st)
        entry = {"against_copy_machine": rec.early_loss if rec else None}
        if plan.preset.baseline:
            base = read_record(plan.stage(f"baseline-{st.target}"))
            entry["against_base"] = base.early_loss if base else None
        assert st.target is not None
        out[st.target] = entry
    return out


def cpu_warning(plan: Plan) -> None:
    if plan.inputs.device == "cpu":
        big = max(s.train.resolution * s.train.steps for s in plan.stages if s.settings is not None)
        if big >= 512 * 100:
            say("warning: training on the CPU; real runs (512 px, 500 steps) take hours here. A CUDA GPU takes minutes.")


def execute(plan: Plan, sd: SdScripts, opts: RunOptions, lock: RunLock, decision: Decision) -> tuple[list[str], list[str]]:
    """Run or skip each stage in order; (stages run, stages skipped)."""
    current: dict[str, str] = {}  # stage -> sha256 of its output as it is now
    ran, skipped = [], []
    n = len(plan.stages)
    for i, (st, go, state) in enumerate(zip(plan.stages, decision.todo, decision.states), 1):
        rec = read_record(st)
        if not go:
            stale = stale_inputs(plan, st, rec, current)
            if stale:
                made = ", ".join(f"{plan.stage(d).output.relative_to(plan.run_dir)}" for d in stale)
                if st.kept and not opts.force:
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
            current[st.name] = rec.output_sha256
            skipped.append(st.name)
            continue
        say(f"[{i}/{n}] {st.name}: {st.what}")
        say(f"        log: {st.log_path}")
        rec = run_stage(plan, sd, st, opts, lock, current)
        current[st.name] = rec.output_sha256
        ran.append(st.name)
        el = f", early loss {rec.early_loss:.4f}" if rec.early_loss is not None else ""
        say(f"[{i}/{n}] {st.name}: done in {fmt_seconds(rec.seconds)}{el} -> {st.output}")
        for f in rec.extra_files:
            say(f"        also kept: {st.dir / f}")
    return ran, skipped


def adopt(plan: Plan, stage: Stage, current: dict[str, str]) -> StageRecord:
    """A record for a finished LoRA found with this stage's fingerprint in its metadata but no record of its own."""
    st = stage.output.stat()
    rec = StageRecord(
        run_id=mark(plan.run_dir).run_id,
        stage=stage.name,
        fingerprint=stage.fingerprint,
        output=str(stage.output),
        output_size=st.st_size,
        output_sha256=sha256_of(stage.output),
        inputs={d: current[d] for d in stage.depends if d in current},
        adopted="found finished, with this stage's fingerprint in its metadata",
    )
    rec.write(stage.record_path)
    return rec


def run(plan: Plan, sd: SdScripts, opts: RunOptions) -> RunSummary:
    cpu_warning(plan)
    with RunLock(plan.run_dir) as lock:
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
            kept_outputs={s.name: str(s.output) for s in plan.stages if s.role in (Role.DIFF, Role.RESIZE)},
            method_check=method_check(plan),
            sd_scripts=SdScriptsInfo(path=str(sd.path), commit=sd.commit, pinned=sd.pinned),
        )
        with disk_space("run.json", plan.run_dir):
            summary.write(plan.run_dir / "run.json")
    return summary


def read_summary(plan: Plan) -> RunSummary | None:
    return read(RunSummary, plan.run_dir / "run.json")
