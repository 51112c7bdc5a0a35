"""Finishing a stage's output: validated, given its provenance, renamed into place; and adopting a finished output
found without its record."""

from __future__ import annotations

import json
from pathlib import Path

from cml import __version__
from cml.errors import StageFailed
from cml.families import family
from cml.files import atomic_path
from cml.model_files import model_identity, sha256_of
from cml.plan import Plan, Role, Stage
from cml.records import StageRecord
from cml.render.scripts import CML_NETWORK_MODULE, NETWORK_MODULE
from cml.resume import expected_rank
from cml.rundir import mark, remove_inside
from cml.safetensors_file import add_metadata, addnet_hashes, append_tensors, file_and_content_sha256, missing_tensors, read_metadata
from cml.validate import ValidationFailed, validate_comfy_lora, validate_copy_machine, validate_lora

# Written beside a produced file in work/ once it passed validation: a re-run after a failure further on (a full
# disk) adopts the file instead of training again.
PRODUCED_NOTE = ".cml-produced.json"


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
        d = plan.preset.direct(stage.target or "")
        meta["cml_direct_multiplier"] = f"{d.multiplier}"
        meta["cml_direct_timesteps"] = f"{d.timesteps[0]},{d.timesteps[1]}"
        meta["cml_direct_scaled"] = f"lora_up x {d.multiplier}: weight 1 gives what +{d.multiplier} gave in training; +1 moves A toward B"
    if stage.role is Role.AVERAGE:
        meta["cml_average"] = f"the mean of {len(stage.depends)} pairs' diff LoRAs, ranks stacked (merge_lora.py --concat): exact"
    if stage.role is Role.SLIDER:
        meta["cml_slider"] = "(diff LoRA A->B - diff LoRA B->A) / 2, ranks stacked: +1 toward B, -1 toward A"
    return meta


def validate_produced(plan: Plan, stage: Stage, produced: Path) -> dict:
    """Validate what the script wrote; facts for the record."""
    try:
        if stage.kind == "merge":
            prefix = "model.diffusion_model." if plan.inputs.model.prefixed else family(plan.inputs.family).denoiser_prefix
            return {"merge_check": validate_copy_machine(produced, stage.model, prefix)}
        if stage.kind == "comfy":
            return {"lora_modules": validate_comfy_lora(produced, stage.model)}
        return {"lora_modules": validate_lora(produced, *expected_rank(plan, stage)).modules}
    except ValidationFailed as e:
        raise StageFailed(f"{stage.name}: output check failed: {e}", where=str(produced), fix=f"see {stage.log_path}") from None


def finish_output(plan: Plan, stage: Stage, produced: Path, facts: dict) -> None:
    """Give a validated output its provenance and final name; it is never seen half-written."""
    if stage.kind == "merge":
        # sd-scripts' merge drops the marker keys: other programs would load a v-pred model as epsilon
        dropped = missing_tensors(stage.model, produced, plan.inputs.model.markers) if plan.inputs.model.markers else []
        if dropped:
            append_tensors(stage.model, produced, stage.output, dropped)
            produced.unlink()
            facts["markers_kept"] = dropped
        else:
            produced.replace(stage.output)
        return
    meta = provenance(plan, stage) | loader_metadata(plan, stage, read_metadata(produced))
    hashes = addnet_hashes(produced, read_metadata(produced) | meta)
    if hashes is not None:  # of the file as written, with its ss_* keys as they now are
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = hashes
    with atomic_path(stage.output) as tmp:
        add_metadata(produced, tmp, meta)
    produced.unlink()


def loader_metadata(plan: Plan, stage: Stage, meta: dict[str, str]) -> dict[str, str]:
    """The keys LoRA loaders read, made true of the file: a plain networks.lora module where cml's trained it, the
    resolution it trained at (sd-scripts writes its default), a name that tells runs apart (A1111 names a LoRA by
    ss_output_name), and for a two-way slider (merge_lora.py writes no training keys) its rank, alpha and base."""
    out: dict[str, str] = {"ss_output_name": f"{plan.preset.name}-{stage.output.stem}"}
    if meta.get("ss_network_module") == CML_NETWORK_MODULE:
        # The file is a plain networks.lora LoRA (cml/sd_process/lora.py); say which module trained it in cml's own key.
        out["ss_network_module"] = NETWORK_MODULE
        out["cml_network_module"] = CML_NETWORK_MODULE
    trained = stage if stage.settings is not None else plan.stage(stage.depends[0])
    if trained.settings is not None:
        r = trained.train.resolution
        out["modelspec.resolution"] = f"{r}x{r}"
    if stage.role in (Role.SLIDER, Role.AVERAGE):
        rank, alpha, _ = expected_rank(plan, stage)
        out |= {"ss_network_module": family(plan.inputs.family).network_module, "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}"}
        out["ss_sd_model_name"] = plan.inputs.model.path.name
    return out


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


def note_produced(stage: Stage, produced: Path, facts: dict, seconds: float) -> None:
    """The note that ``produced`` passed validation (see PRODUCED_NOTE)."""
    note = {"fingerprint": stage.fingerprint, "size": produced.stat().st_size, "sha256": sha256_of(produced), "facts": facts, "seconds": seconds}
    (stage.work_dir / PRODUCED_NOTE).write_text(json.dumps(note))


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


def record_of(plan: Plan, stage: Stage, current: dict[str, tuple[str, str]], **facts) -> StageRecord:
    """The record of a stage's finished output as it is now: its size, sha256 and tensors' sha256, the upstream
    outputs it was made from (``current``: stage -> (file sha256, tensors' sha256); the tensors' are kept), and
    ``facts``; written beside it."""
    whole, content = file_and_content_sha256(stage.output)
    rec = StageRecord(
        run_id=mark(plan.run_dir).run_id,
        stage=stage.name,
        fingerprint=stage.fingerprint,
        output=str(stage.output),
        output_size=stage.output.stat().st_size,
        output_sha256=whole,
        output_content=content,
        inputs={d: current[d][1] for d in stage.depends if d in current},
        **facts,
    )
    rec.write(stage.record_path)
    return rec


def adopt(plan: Plan, stage: Stage, current: dict[str, tuple[str, str]]) -> StageRecord:
    """A record for a finished LoRA found with this stage's fingerprint in its metadata but no record of its own."""
    return record_of(plan, stage, current, adopted="found finished, with this stage's fingerprint in its metadata")
