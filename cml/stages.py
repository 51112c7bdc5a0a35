"""Building a plan: the stages of each target's method (copy machine: copy, merge, diff; direct; the way back and the
two-way slider; resize), each with its fingerprint."""

from __future__ import annotations

from pathlib import Path

from cml.families import FAMILIES
from cml.images import pixel_sha256
from cml.inputs import Inputs
from cml.model_files import model_identity
from cml.plan import COPY_MACHINE, Plan, Role, Stage
from cml.policy import effective_settings, fingerprint, merge_precision, settings_id
from cml.preset.models import Preset, TrainSettings


def _copy_machine(
    preset: Preset,
    inputs: Inputs,
    run_dir: Path,
    common: dict,
    base_id: str,
    images: list,
    pixels: list[str],
    files: list[str],
    target: str | None,
    reverse: bool | None = None,
    pair: int | None = None,
) -> tuple[list[Stage], tuple[Path, str, list[Path], str]]:
    """The copy stage (and its merge) of A, of a symmetric target's B (target set), or of one pair's A (pair set): the
    stages, and what a diff stage trains against: (model, its fingerprint, LoRAs merged in memory, the stage it
    depends on)."""
    reverse = target is not None if reverse is None else reverse
    copy_s, notes = effective_settings(preset.copy_settings(), inputs)
    what = "image B" if reverse else "image A"
    copy = Stage(
        role=Role.COPY,
        target=target,
        reverse=reverse,
        pair=pair,
        what=f"copy LoRA: overfit {what} on the base model"
        + (f" (the way back of '{target}')" if reverse else f" (pair {pair} of '{target}')" if pair else ""),
        run_dir=run_dir,
        output_name=f"{target}_copy_b.safetensors" if reverse else f"{target}_copy_p{pair}.safetensors" if pair else "copy.safetensors",
        model=preset.base_model,
        settings=copy_s,
        images=images,
        inputs_sha256={"B" if reverse else "A": files},
        notes=notes,
    )
    copy.fingerprint = fingerprint({"stage": copy.name if reverse or pair else "copy", "settings": settings_id(copy_s), "A": pixels, "base": base_id, **common})
    if preset.merge != "checkpoint":
        return [copy], (preset.base_model, copy.fingerprint, [copy.output], copy.name)
    merge = Stage(
        role=Role.MERGE,
        target=target,
        reverse=reverse,
        pair=pair,
        what=f"merge the copy LoRA into the base: the copy machine model{' of B' if reverse else f' of pair {pair}' if pair else ''}",
        run_dir=run_dir,
        output_name=(
            f"{target}_{COPY_MACHINE.replace('.safetensors', '_b.safetensors')}"
            if reverse
            else f"{target}_copy_machine_p{pair}.safetensors"
            if pair
            else COPY_MACHINE
        ),
        model=preset.base_model,
        depends=[copy.name],
    )
    merge.fingerprint = fingerprint(
        {"stage": merge.name if reverse or pair else "merge", "copy": copy.fingerprint, "base": base_id, "precision": merge_precision(preset, inputs), **common}
    )
    return [copy, merge], (merge.output, merge.fingerprint, [], merge.name)


def build_plan(preset: Preset, preset_sha256: str, inputs: Inputs, sd_scripts_commit: str | None, run_dir: Path | None = None) -> Plan:
    run_dir = run_dir if run_dir is not None else preset.output_dir / preset.name
    base_id = model_identity(inputs.model)
    common = {"family": inputs.family, "v": inputs.v_parameterization, "device": inputs.device, "sd_scripts": sd_scripts_commit}
    a_images = [s.image for s in inputs.source]
    a_pixels = [pixel_sha256(i) for i in a_images]
    a_files = [s.sha256 for s in inputs.source]
    stages: list[Stage] = []
    machine = None
    shared = [t for t in inputs.targets if preset.target_method(t) == "copy_machine" and not getattr(preset.targets[t], "each_pair", False)]
    if shared:  # a direct target needs no copy machine; one trained pair by pair has its own
        made, machine = _copy_machine(preset, inputs, run_dir, common, base_id, a_images, a_pixels, a_files, None)
        stages += made

    for name, t in inputs.targets.items():
        b_pixels = [pixel_sha256(i) for i in t.images]
        if preset.target_method(name) == "direct":
            s, notes = effective_settings(preset.target_settings(name), inputs)
            d = preset.direct(name)
            final = Stage(
                role=Role.DIRECT,
                target=name,
                what=f"direct LoRA '{name}': A -> B on the base model, in one stage (the direct method)",
                run_dir=run_dir,
                output_name=f"{name}.safetensors",
                model=preset.base_model,
                settings=s,
                images=t.images,
                images_a=a_images,
                inputs_sha256={"A": a_files, "B": t.sha256},
                notes=notes,
            )
            final.fingerprint = fingerprint(
                {"stage": "direct", "settings": settings_id(s), "direct": d.direct_id(), "A": a_pixels, "B": b_pixels, "base": base_id, **common}
            )
            stages.append(final)
        elif getattr(preset.targets[name], "each_pair", False):
            final = _each_pair(preset, inputs, run_dir, common, base_id, name, t, a_images, a_files, stages)
            stages.append(final)
        else:
            assert machine is not None
            model, machine_fp, base_weights, machine_stage = machine
            s, notes = effective_settings(preset.diff_settings(name), inputs)
            final = Stage(
                role=Role.DIFF,
                target=name,
                what=f"diff LoRA '{name}': image B on the copy machine model",
                run_dir=run_dir,
                output_name=f"{name}.safetensors",
                model=model,
                settings=s,
                images=t.images,
                base_weights=base_weights,
                inputs_sha256={"A": a_files, "B": t.sha256},
                depends=[machine_stage],
                notes=notes,
            )
            final.fingerprint = fingerprint(
                {"stage": "diff", "settings": settings_id(s), "B": b_pixels, "machine": machine_fp, "merge": preset.merge, **common}
            )
            stages.append(final)
            if getattr(preset.targets[name], "symmetric", False):
                stages += _slider(preset, inputs, run_dir, common, base_id, name, t, final, s, a_images, a_pixels, a_files, b_pixels)
        if preset.baseline:  # one naive LoRA per distinct B and recipe (a direct target of the same B shares it)
            naive = _naive(preset, inputs, run_dir, common, base_id, name, t, b_pixels)
            if naive.fingerprint not in {s.fingerprint for s in stages if s.role is Role.NAIVE}:
                stages.append(naive)
        converter = FAMILIES[inputs.family].comfy_converter
        if converter:
            cv = Stage(
                role=Role.COMFY,
                target=name,
                what=f"'{name}' for ComfyUI ({converter})",
                run_dir=run_dir,
                output_name=f"{name}_comfy.safetensors",
                model=final.output,
                depends=[final.name],
                inputs_sha256=final.inputs_sha256,
            )
            cv.fingerprint = fingerprint({"stage": "comfy", "of": final.fingerprint, "script": converter})
            stages.append(cv)
        if preset.resize_to:
            rs = Stage(
                role=Role.RESIZE,
                target=name,
                what=f"shrink '{name}' to rank {preset.resize_to} (resize_lora.py)",
                run_dir=run_dir,
                output_name=f"{name}_r{preset.resize_to}.safetensors",
                model=final.output,
                depends=[final.name],
                inputs_sha256=final.inputs_sha256,
            )
            rs.fingerprint = fingerprint({"stage": "resize", "of": final.fingerprint, "rank": preset.resize_to})
            stages.append(rs)
    return Plan(preset, preset_sha256, inputs, run_dir, stages, sd_scripts_commit)


def _each_pair(preset: Preset, inputs: Inputs, run_dir: Path, common: dict, base_id: str, name: str, t, a_images, a_files, stages: list[Stage]) -> Stage:
    """A target trained pair by pair: for each (A_i, B_i) its own copy LoRA (and merge) and diff LoRA; then their mean
    (merge_lora.py --concat: each LoRA's alpha / rank halves as the ranks stack, so n LoRAs at ratio 1 give the mean of
    their changes exactly, at n times the rank). Appends the pairs' stages; returns the average stage."""
    diffs = []
    for i, (a, b, fa, fb) in enumerate(zip(a_images, t.images, a_files, t.sha256), 1):
        made, (model, machine_fp, base_weights, machine_stage) = _copy_machine(
            preset, inputs, run_dir, common, base_id, [a], [pixel_sha256(a)], [fa], name, reverse=False, pair=i
        )
        stages += made
        s, notes = effective_settings(preset.diff_settings(name), inputs)
        d = Stage(
            role=Role.DIFF,
            target=name,
            pair=i,
            what=f"diff LoRA '{name}', pair {i}: its B on its own copy machine model",
            run_dir=run_dir,
            output_name=f"{name}_p{i}.safetensors",
            model=model,
            settings=s,
            images=[b],
            base_weights=base_weights,
            inputs_sha256={"A": [fa], "B": [fb]},
            depends=[machine_stage],
            notes=notes,
        )
        d.fingerprint = fingerprint(
            {"stage": d.name, "settings": settings_id(s), "B": [pixel_sha256(b)], "machine": machine_fp, "merge": preset.merge, **common}
        )
        stages.append(d)
        diffs.append(d)
    avg = Stage(
        role=Role.AVERAGE,
        target=name,
        what=f"'{name}': the mean of its {len(diffs)} pairs' diff LoRAs (merge_lora.py --concat: exact)",
        run_dir=run_dir,
        output_name=f"{name}.safetensors",
        model=diffs[0].output,
        depends=[d.name for d in diffs],
        inputs_sha256={"A": list(a_files), "B": list(t.sha256)},
    )
    avg.fingerprint = fingerprint({"stage": "average", "of": [d.fingerprint for d in diffs]})
    return avg


def _naive(preset: Preset, inputs: Inputs, run_dir: Path, common: dict, base_id: str, name: str, t, b_pixels: list[str]) -> Stage:
    """The naive LoRA of a target: B trained directly on the plain base with the diff stage's recipe (no copy machine),
    the baseline the check sweeps beside the difference LoRAs."""
    s, notes = effective_settings(preset.diff_settings(name), inputs)
    naive = Stage(
        role=Role.NAIVE,
        target=name,
        what=f"naive LoRA '{name}': image B on the plain base, the diff stage's recipe (the baseline)",
        run_dir=run_dir,
        output_name=f"{name}_naive.safetensors",
        model=preset.base_model,
        settings=s,
        images=t.images,
        inputs_sha256={"B": t.sha256},
        notes=notes,
    )
    naive.fingerprint = fingerprint({"stage": "naive", "settings": settings_id(s), "B": b_pixels, "base": base_id, **common})
    return naive


def _slider(preset, inputs, run_dir, common, base_id, name, t, diff: Stage, s: TrainSettings, a_images, a_pixels, a_files, b_pixels) -> list[Stage]:
    """A symmetric target's way back (a copy machine of B, a diff LoRA to A), and the two-way slider of both."""
    stages, (model, machine_fp, base_weights, machine_stage) = _copy_machine(preset, inputs, run_dir, common, base_id, t.images, b_pixels, t.sha256, name)
    back = Stage(
        role=Role.DIFF,
        target=name,
        reverse=True,
        what=f"diff LoRA back from '{name}': image A on the copy machine model of B",
        run_dir=run_dir,
        output_name=f"{name}_reverse.safetensors",
        model=model,
        settings=s,
        images=a_images,
        base_weights=base_weights,
        inputs_sha256={"A": a_files, "B": t.sha256},
        depends=[machine_stage],
    )
    back.fingerprint = fingerprint({"stage": back.name, "settings": settings_id(s), "A": a_pixels, "machine": machine_fp, "merge": preset.merge, **common})
    slider = Stage(
        role=Role.SLIDER,
        target=name,
        what=f"two-way slider '{name}': (diff LoRA - diff LoRA back) / 2, at twice the rank (sd-scripts' merge_lora.py --concat)",
        run_dir=run_dir,
        output_name=f"{name}_slider.safetensors",
        model=diff.output,
        depends=[diff.name, back.name],
        inputs_sha256={"A": a_files, "B": t.sha256},
    )
    slider.fingerprint = fingerprint({"stage": "slider", "diff": diff.fingerprint, "back": back.fingerprint})
    return [*stages, back, slider]
