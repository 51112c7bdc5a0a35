"""Command line: subcommands, exit codes, and turning errors into one line (tracebacks with --debug)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from cml import __version__
from cml.config import toml_value
from cml.errors import CmlError, InputError
from cml.runner import Terminated

PRESETS = Path(__file__).resolve().parent.parent / "presets"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sd-scripts", metavar="PATH", help="sd-scripts folder (else CML_SD_SCRIPTS, the submodule, cml setup's copy)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _preset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", type=Path, help="preset TOML (see presets/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a preset value; VALUE is TOML (repeatable)")


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no trainer output: one progress line every few seconds")
    g.add_argument("-v", "--verbose", action="store_true", help="everything")
    p.add_argument("--force", action="store_true", help="replace finished diff LoRAs made from other settings")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run from this stage on (copy, merge, diff-NAME, ...)")
    p.add_argument("--baseline", action="store_true", help="also measure the diff stage's early loss against the plain base model")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cml", description="Copy Machine LoRA training over kohya sd-scripts.")
    ap.add_argument("--version", action="version", version=f"cml {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("setup", help="get sd-scripts at the pinned commit")
    p.add_argument("--source", metavar="URL_OR_PATH", help="clone from here (a URL or a local git directory) instead of the submodule's remote")
    p.add_argument("--deps", action="store_true", help="also pip-install sd-scripts' requirements.txt into this Python")
    p.add_argument("--debug", action="store_true")

    p = sub.add_parser("doctor", help="check that a run can work here")
    _common(p)

    p = sub.add_parser("show-config", help="print the fully resolved preset as TOML")
    _preset_args(p)
    p.add_argument("--debug", action="store_true")

    p = sub.add_parser("plan", help="write every kohya file of a run; run nothing")
    _preset_args(p)
    _common(p)
    p.add_argument("-o", "--output-dir", type=Path, help="put the run folder under this folder (overrides output_dir)")

    p = sub.add_parser("run", help="run copy, merge and diff stages")
    _preset_args(p)
    _common(p)
    _run_args(p)
    p.add_argument("-o", "--output-dir", type=Path, help="put the run folder under this folder (overrides output_dir)")

    p = sub.add_parser("check", help="copy check, weight sweep grids, metrics and report.md for a finished run")
    p.add_argument("run_dir", type=Path, help="a run folder (holds preset.toml)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="e.g. check.weights=[-1,0,1]")
    _common(p)
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("grayscale", help="the article's recipe on your images: A (and B, else A in grayscale)")
    p.add_argument("a", type=Path, help="image A")
    p.add_argument("b", type=Path, nargs="?", help="image B (default: A converted to grayscale)")
    p.add_argument("--model", type=Path, required=True, help="base SD checkpoint")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("runs"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    _common(p)
    _run_args(p)

    p = sub.add_parser("demo", help="the whole pipeline on a random SD1.5-architecture model at 64 px (CPU)")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("runs"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    _common(p)
    _run_args(p)
    return ap


def _toml_str(p: Path) -> str:
    return toml_value(str(p.expanduser().resolve()))


def _with_output(args) -> list[str]:
    sets = list(args.sets)
    if getattr(args, "output_dir", None) is not None:
        sets.append(f"output_dir={_toml_str(args.output_dir)}")
    if getattr(args, "baseline", False):
        sets.append("baseline=true")
    return sets


def _opts(args):
    from cml.pipeline import RunOptions

    mode = "quiet" if args.quiet else "verbose" if args.verbose else "normal"
    return RunOptions(mode=mode, force=args.force, from_stage=args.from_stage)


def _finish(summary: dict) -> int:
    from cml.pipeline import say

    say(f"finished in {summary['seconds']:.0f} s; run folder: {summary['run_dir']}")
    for name, path in summary["kept_outputs"].items():
        say(f"  {name}: {path}")
    for target, m in summary["method_check"].items():
        cm, base = m.get("against_copy_machine"), m.get("against_base")
        if cm is not None:
            extra = f" vs {base:.4f} against the plain base" if base is not None else ""
            say(f"  method check '{target}': early diff loss {cm:.4f} against the copy machine model{extra}")
    return 0


def _cmd_run(args, preset: Path, sets: list[str]) -> int:
    from cml import pipeline

    plan, sd = pipeline.prepare(preset, sets, args.sd_scripts)
    rc = _finish(pipeline.run(plan, sd, _opts(args)))
    if plan.preset.check.enabled:
        _check(plan, sd, "quiet" if args.quiet else "normal")
    return rc


def _check(plan, sd, mode: str) -> None:
    from cml.pipeline import say
    from cml.report.check import print_table, run_check

    say("check: copy check, weight sweeps and metrics with sd-scripts' generator ...")
    result = run_check(plan, sd, mode)
    print_table(result)
    for g in result["grids"]:
        say(f"  grid: {g}")
    say(f"  report: {plan.run_dir / 'report.md'}")


def dispatch(args) -> int:
    if args.cmd == "setup":
        from cml.sdscripts import install_requirements, setup

        sd = setup(args.source)
        if args.deps:
            install_requirements(sd)
        return 0
    if args.cmd == "doctor":
        from cml.doctor import diagnose, report

        return report(diagnose(args.sd_scripts))
    if args.cmd == "show-config":
        import tomli_w

        from cml.config import load_preset

        preset, _ = load_preset(args.preset, args.sets)
        sys.stdout.write(tomli_w.dumps(preset.to_toml_dict()))
        return 0
    if args.cmd == "plan":
        from cml import pipeline
        from cml.kohya.render import render
        from cml.runner import RunLock

        try:
            plan, sd = pipeline.prepare(args.preset, _with_output(args), args.sd_scripts)
        except InputError as e:
            if not e.what.startswith("sd-scripts not found"):
                raise
            # Planning needs no sd-scripts: write the files with the submodule path in commands.sh.
            pipeline.say("warning: sd-scripts not found; commands.sh assumes the sd-scripts/ submodule")
            plan, sd = _plan_without_sd(args)
        with RunLock(plan.run_dir):  # never rewrite the files of a run in progress
            files = render(plan, sd.path)
        pipeline.say(f"wrote {len(files)} files for {len(plan.stages)} stages in {plan.run_dir}")
        for st in plan.stages:
            pipeline.say(f"  {st.name}: {st.what}")
        return 0
    if args.cmd == "run":
        return _cmd_run(args, args.preset, _with_output(args))
    if args.cmd == "check":
        from cml import pipeline

        preset = args.run_dir / "preset.toml"
        if not preset.is_file():
            raise InputError("not a cml run folder (no preset.toml)", str(args.run_dir), "give the folder that `cml run` printed")
        # The folder may have moved since the run: locate the run by where it is now.
        here = args.run_dir.resolve()
        sets = [f"output_dir={_toml_str(here.parent)}", f"name={toml_value(here.name)}"]
        plan, sd = pipeline.prepare(preset, sets + args.sets, args.sd_scripts, for_check=True)
        from cml.runner import RunLock

        with RunLock(plan.run_dir):
            _check(plan, sd, "quiet" if args.quiet else "normal")
        return 0
    if args.cmd == "grayscale":
        sets = _with_output(args) + [f"base_model={_toml_str(args.model)}", f"source={_toml_str(args.a)}"]
        if args.b is not None:
            sets.append(f"targets.grayscale={{images=[{_toml_str(args.b)}]}}")
        return _cmd_run(args, PRESETS / "grayscale.toml", sets)
    if args.cmd == "demo":
        from cml.demo import prepare_demo

        preset, sets = prepare_demo(args.sd_scripts)
        return _cmd_run(args, preset, _with_output(args) + sets)
    raise AssertionError(args.cmd)


def _plan_without_sd(args):
    from cml import pipeline
    from cml.config import load_preset
    from cml.inputs import load_inputs
    from cml.kohya.render import gui_problems
    from cml.plan import build_plan
    from cml.rundir import check_run_dir
    from cml.sdscripts import SUBMODULE, SdScripts

    preset, digest = load_preset(args.preset, _with_output(args))
    inputs = load_inputs(preset)
    for n in inputs.notes:
        pipeline.say(f"note: {n}")
    plan = build_plan(preset, digest, inputs, None)
    for problem in gui_problems(plan):
        pipeline.say(f"warning: {problem}")
    check_run_dir(plan.run_dir, preset_file=args.preset, inputs=pipeline.input_files(preset), sd_scripts=None)
    return plan, SdScripts(SUBMODULE, None, "not found")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except (KeyboardInterrupt, Terminated):
        print("cml: interrupted; finished stages are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    except CmlError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"cml: error: {e.line()}" if "\n" not in e.line() else "cml: error:\n" + e.line(), file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if getattr(args, "debug", False):
            raise
        print(f"cml: internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1
