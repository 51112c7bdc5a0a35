"""Checks made just before a stage runs: disk space and RAM for a merge, the GPU's free memory, a CPU run's warning."""

from __future__ import annotations

import shutil

from cml.console import say
from cml.device import gpu_memory
from cml.errors import InputError
from cml.plan import Plan, Stage


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


def cpu_warning(plan: Plan) -> None:
    if plan.inputs.device == "cpu":
        big = max(s.train.resolution * s.train.steps for s in plan.stages if s.settings is not None)
        if big >= 512 * 100:
            say("warning: training on the CPU; real runs (512 px, 500 steps) take hours here. A CUDA GPU takes minutes.")
