"""What is up to date: each stage's finished output against its record, and which stages a run must (re)do.

A finished output is trusted only when its size and sha256 match its record and the record's fingerprint is the
stage's (a LoRA without a record is adopted when its own metadata carries the fingerprint). A stage is done
again when its output is missing or damaged, was made from other settings or inputs, or was made from an
upstream file whose bytes have changed since. Replacing finished work users keep needs ``--force``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cml.console import say
from cml.errors import InputError
from cml.model_files import sha256_of
from cml.plan import Plan, Role, Stage
from cml.records import StageRecord, read
from cml.safetensors_file import file_and_content_sha256, read_metadata
from cml.validate import ValidationFailed, validate_comfy_lora, validate_lora


@dataclass
class RunOptions:
    mode: str = "normal"  # quiet | normal | verbose
    force: bool = False
    from_stage: str | None = None


def read_record(stage: Stage) -> StageRecord | None:
    return read(StageRecord, stage.record_path)


@dataclass
class OutputState:
    """What a stage's final file is, checked against its record (or, for a LoRA, against its own metadata)."""

    good: bool  # finished, undamaged, made from exactly this stage's inputs and settings
    why: str | None = None  # why not: missing | damaged (...) | made from other settings or inputs | no record
    intact: bool = False  # an undamaged finished file is there (replacing it loses work)
    adopt: bool = False  # good by its metadata, with no record: write one
    sha256: str | None = None  # of the file as it is, where known


def output_state(stage: Stage, plan: Plan) -> OutputState:
    out = stage.output
    if out.is_symlink() or (out.exists() and not out.is_file()):
        return OutputState(False, "not a file cml wrote")
    if not out.is_file():
        return OutputState(False, "missing")
    rec = read_record(stage)
    if rec is not None:
        size = out.stat().st_size
        digest = sha256_of(out) if size == rec.output_size else None
        if digest == rec.output_sha256:
            if rec.fingerprint != stage.fingerprint:
                return OutputState(False, "made from other settings or inputs", intact=True, sha256=digest)
            return OutputState(True, intact=True, sha256=digest)
        damaged = OutputState(False, "damaged (truncated)" if size < rec.output_size else "damaged (changed since it was made)")
        if stage.kind == "merge":
            return damaged
        # The file and its record disagree. Its tensors as the record has them (only its metadata edited, or the record
        # damaged): the record is rebuilt. Another LoRA's (by its own metadata): made from other settings. Else damaged.
        state = lora_state(stage, plan)
        if state.good:
            try:
                same = rec.output_content is not None and file_and_content_sha256(out)[1] == rec.output_content
            except (OSError, ValueError):
                same = False
            if not same:
                return damaged
            say(f"{stage.record_path.relative_to(plan.run_dir)} does not describe {out.name}, whose tensors are the ones it records: its record is made again")
            return state
        return state if state.intact else damaged
    if stage.record_path.exists():
        say(f"{stage.record_path.relative_to(plan.run_dir)} is not a record cml can read: {stage.output.name} is checked again")
    if stage.kind == "merge":
        return OutputState(False, "not checked (no record of it)")
    return lora_state(stage, plan)


def lora_state(stage: Stage, plan: Plan) -> OutputState:
    """A LoRA judged by itself: loads, is valid, and its metadata carries this stage's fingerprint (adopt: write its
    record)."""
    out = stage.output
    try:
        meta = read_metadata(out)
    except Exception:
        return OutputState(False, "damaged (does not load)")
    if meta.get("cml_fingerprint") != stage.fingerprint:
        return OutputState(False, "made from other settings or inputs", intact=True)
    try:
        if stage.kind == "comfy":
            validate_comfy_lora(out, stage.model)
        else:
            validate_lora(out, *expected_rank(plan, stage))
    except ValidationFailed as e:
        return OutputState(False, f"damaged ({e})")
    return OutputState(True, intact=True, adopt=True)


def expected_rank(plan: Plan, stage: Stage) -> tuple[int, float, bool]:
    """Rank and alpha the stage's LoRA must have, and whether resize_lora.py made it."""
    if stage.role is Role.RESIZE:
        assert stage.target is not None and plan.preset.resize_to is not None  # a resize stage exists only then
        s = plan.preset.diff_settings(stage.target)
        r = plan.preset.resize_to
        return r, s.alpha / s.dim * r, True  # resize_lora.py keeps alpha/dim
    if stage.role is Role.SLIDER:  # --concat stacks both ranks under the first LoRA's alpha
        assert stage.target is not None
        s = plan.preset.diff_settings(stage.target)
        return 2 * s.dim, s.alpha, False
    if stage.role is Role.AVERAGE:  # the pairs' ranks stacked
        assert stage.target is not None
        s = plan.preset.diff_settings(stage.target)
        return len(stage.depends) * s.dim, s.alpha, False
    return stage.train.dim, stage.train.alpha, False


def redo_verb(stage: Stage) -> str:
    return {"merge": "merged again", "resize": "made again", "comfy": "made again", "average": "made again", "slider": "made again"}.get(
        stage.kind, "trained again"
    )


@dataclass
class Decision:
    """What the run does with each stage, decided before anything is written."""

    todo: list[bool]
    states: list[OutputState]
    cause: dict[str, str] = field(default_factory=dict)  # stage -> why it runs again


def check_options(plan: Plan, opts: RunOptions) -> None:
    """The run's options against the plan, before anything (the run lock included) is written."""
    names = [s.name for s in plan.stages]
    if opts.from_stage is not None and opts.from_stage not in names:
        raise InputError(f"--from {opts.from_stage!r} is not a stage of this run", None, f"use one of: {', '.join(names)}")


def odd_entries(plan: Plan) -> list[str]:
    """Entries of the stage folders that are not what cml makes there (a folder where a file goes, or the other way
    round, a link): cml would fail on them mid-run, or delete what it did not make."""
    odd = []
    for st in plan.stages:
        files = [st.output, st.record_path, st.log_path, st.dir / "train.toml", st.dir / "dataset.toml", st.dir / "gui.json", st.dir / "command.json"]
        folders = [st.images_dir, st.images_a_dir, st.work_dir, st.dir / "logs", st.dir / "extra"]
        if st.dir.is_symlink() or (st.dir.exists() and not st.dir.is_dir()):
            odd.append(f"{st.dir.relative_to(plan.run_dir)} is not a folder")
            continue
        for p in files:
            if p.is_symlink() or (p.exists() and not p.is_file()):
                odd.append(f"{p.relative_to(plan.run_dir)} is a {'link' if p.is_symlink() else 'folder'} where cml writes a file")
        for p in folders:
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                odd.append(f"{p.relative_to(plan.run_dir)} is a {'link' if p.is_symlink() else 'file'} where cml makes a folder")
    return odd


def decide(plan: Plan, opts: RunOptions) -> Decision:
    """Which stages run; refuses (before anything is written) to replace finished work without --force."""
    names = [s.name for s in plan.stages]
    check_options(plan, opts)
    odd = odd_entries(plan)
    if odd:
        raise InputError("; ".join(odd), str(plan.run_dir), "remove or move them (cml makes these itself), then run again")
    forced_from = names.index(opts.from_stage) if opts.from_stage else len(names)
    # --from re-runs those stages anyway: only the finished files users keep are looked at (the copy machine model is gigabytes)
    states = [output_state(st, plan) if i < forced_from or st.protected else OutputState(False, "--from") for i, st in enumerate(plan.stages)]
    todo = [i >= forced_from or not state.good for i, state in enumerate(states)]
    cause: dict[str, str] = {}
    for i, (st, state) in enumerate(zip(plan.stages, states)):
        rel = st.output.relative_to(plan.run_dir)
        if i >= forced_from:
            cause[st.name] = f"--from {opts.from_stage}"
        elif state.why is not None and (state.why != "missing" or read_record(st) is not None):
            cause[st.name] = state.why
            if not state.intact:
                say(f"{rel} is {state.why}: it will be {redo_verb(st)}")
        # What a stage is made from changes when its input stage trains again (training is not bit-reproducible
        # everywhere) or runs with other settings; a merge or resize made again from the same input gives the same
        # bytes, which execute() verifies against the record before it keeps what was made from it.
        up = next((plan.stage(d) for d in st.depends if d in names and todo[names.index(d)]), None)
        if up is not None and i < forced_from:
            up_state = states[names.index(up.name)]
            if up.kind == "train" or up_state.intact:
                todo[i] = True
                if state.why is None or state.intact:
                    why = f" ({cause[up.name]})" if up.name in cause else ""
                    cause[st.name] = f"made from {up.output.relative_to(plan.run_dir)}, which will be {redo_verb(up)}{why}"
    lost = [
        f"{st.output.relative_to(plan.run_dir)} ({cause.get(st.name, 'made from other settings or inputs')})"
        for i, (st, state) in enumerate(zip(plan.stages, states))
        if todo[i] and st.protected and state.intact
    ]
    if lost and not opts.force:
        raise InputError(
            f"this would replace finished work: {'; '.join(lost)}",
            str(plan.run_dir),
            "re-run with --force to replace it, or set another name / output_dir",
        )
    return Decision(todo, states, cause)


def stale_inputs(plan: Plan, stage: Stage, rec: StageRecord | None, current: dict[str, tuple[str, str]]) -> list[str]:
    """The upstream outputs whose tensors differ from those ``stage``'s finished output was made from (a record of
    cml 0.1 holds the file's sha256: it matches either)."""
    if rec is None:
        return []
    return [d for d in stage.depends if d in rec.inputs and d in current and rec.inputs[d] not in current[d]]
