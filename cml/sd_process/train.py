"""sd-scripts' LoRA trainers as cml runs them: their own classes and code, with exact speed-ups.

    python -m cml.sd_process.train SCRIPT [--cml_direct_a DATASET_A.toml --cml_direct_multiplier W
        --cml_direct_timesteps MIN,MAX] --config_file train.toml

SCRIPT is the family's trainer (train_network, sdxl_train_network, flux_train_network, ...); with ``--cml_sample
JOBS.json`` it draws the check's images instead of training (cml/sd_process/sample.py). Runs in sd-scripts'
folder with its Python (sd-scripts on the path), started the way the script's own ``__main__`` starts it, with the
trainer class composed by cml/sd_process/trainer.py and cml's patches (cml/sd_process/patches.py), each giving the
same LoRA bit for bit (tests/sdscripts/test_speedups.py trains both ways and compares). With ``--cml_direct_*`` it
trains the direct method (cml/sd_process/direct.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cml.sd_process import patches
from cml.sd_process.direct import DirectStep
from cml.sd_process.trainer import DirectMethod, ExactSpeedups, compose


def cml_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """cml's own options (--cml_NAME VALUE), taken out before sd-scripts' parser sees the rest."""
    opts: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        if a.startswith("--cml_"):
            opts[a.removeprefix("--cml_")] = next(it)
        else:
            rest.append(a)
    return opts, rest


def direct_step(opts: dict[str, str]) -> DirectStep | None:
    if "direct_a" not in opts:
        return None
    lo, hi = (int(x) for x in opts["direct_timesteps"].split(","))
    return DirectStep(opts["direct_a"], float(opts["direct_multiplier"]), (lo, hi))


DIRECT_HOOKS = ("hook-noise-pred", "hook-cache-text", "hook-network", "lora-save")


def main(argv: list[str]) -> int:
    script, (opts, rest) = argv[0], cml_options(argv[1:])
    module = __import__(script)
    from library import train_util

    parser = module.setup_parser()
    args = parser.parse_args(rest)
    train_util.verify_command_line_training_args(args)
    sys.argv = [f"{script}.py", *rest]  # read_config_from_file reads sys.argv again
    args = train_util.read_config_from_file(args, parser)

    concerns: list[type] = [ExactSpeedups]
    attributes: dict = {}
    direct = direct_step(opts)
    if direct is not None:
        if not all(patches.applies(h) for h in DIRECT_HOOKS):  # the method has no fallback: refuse, named above
            raise SystemExit("cml: the direct method cannot run on this sd-scripts: a hook it overrides has changed")
        concerns.insert(0, DirectMethod)
        attributes["cml_direct"] = direct
    from cml.sd_process.dev.profiler import Profiling, step_profiler

    profiler = step_profiler(str(getattr(args, "output_name", None) or "stage"))
    if profiler is not None and patches.applies("hook-step-start"):
        concerns.insert(0, Profiling)
        attributes["cml_profiler"] = profiler
    if "sample" in opts:  # the check's images (cml/sd_process/sample.py): the trainer draws them, then stops
        from cml.sd_process.sample import CheckSampling

        concerns.insert(0, CheckSampling)
        attributes["cml_sample"] = json.loads(Path(opts["sample"]).read_text(encoding="utf-8"))
    trainer = compose(module, script, concerns, attributes)
    patches.patch_model_hash()
    patches.patch_model_load(exact=True)
    optimizer = str(getattr(args, "optimizer_type", "") or "").lower()
    if "8bit" in optimizer or optimizer.startswith("paged"):
        patches.patch_8bit_optimizers()
    from cml.sd_process.sample import SamplingDone

    try:
        trainer().train(args)
    except SamplingDone:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
