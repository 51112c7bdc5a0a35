"""Command line: subcommands, exit codes, and turning errors into one line (tracebacks with --debug)."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from cml import __version__
from cml.errors import CmlError, InputError
from cml.runner import Terminated


def build_parser() -> argparse.ArgumentParser:
    # Shared option groups (argparse parents): each defined once.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks")
    sd = argparse.ArgumentParser(add_help=False, parents=[debug])
    sd.add_argument("--sd-scripts", metavar="PATH", help="sd-scripts folder (else CML_SD_SCRIPTS, the submodule, cml setup's copy)")
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a preset value; VALUE is TOML (repeatable)")
    preset = argparse.ArgumentParser(add_help=False, parents=[sets])
    preset.add_argument("preset", help="a preset file (.toml), or the name of a shipped preset (`cml presets` lists them)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output-dir", type=Path, help="put the run folder under this folder (overrides output_dir)")
    running = argparse.ArgumentParser(add_help=False)
    g = running.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="cml's own lines only, no progress lines")
    g.add_argument("-v", "--verbose", action="store_true", help="also stream the trainers' whole output (always in each stage's log.txt)")
    running.add_argument("--force", action="store_true", help="replace finished LoRAs (copy, diff, resized) made from other settings")
    running.add_argument(
        "--from", dest="from_stage", metavar="STAGE", help="re-run from this stage on (copy, merge, diff-NAME, ...); --force to replace finished LoRAs"
    )
    running.add_argument("--baseline", action="store_true", help="also train each target's naive LoRA (B on the plain base), swept beside the others")

    ap = argparse.ArgumentParser(prog="cml", description="Copy Machine LoRA training over kohya sd-scripts.")
    ap.add_argument("--version", action="version", version=f"cml {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("setup", parents=[debug], help="get sd-scripts at the pinned commit")
    p.add_argument("--source", metavar="URL_OR_PATH", help="clone from here (a URL or a local git directory) instead of GitHub")
    p.add_argument("--deps", action="store_true", help="also pip-install sd-scripts' requirements.txt into this Python")
    p.set_defaults(func=cmd_setup)
    sub.add_parser("doctor", parents=[sd], help="check that a run can work here").set_defaults(func=cmd_doctor)
    p = sub.add_parser("presets", parents=[debug], help="list the shipped presets")
    p.add_argument("--reference", action="store_true", help="print every preset key with its type, default and meaning (docs/presets.md)")
    p.set_defaults(func=cmd_presets)
    sub.add_parser("show-config", parents=[preset, debug], help="print the fully resolved preset as TOML").set_defaults(func=cmd_show_config)
    sub.add_parser("plan", parents=[preset, sd, out], help="write every kohya file of a run; run nothing").set_defaults(func=cmd_plan)
    sub.add_parser("run", parents=[preset, sd, out, running], help="run copy, merge and diff stages").set_defaults(func=cmd_run)
    p = sub.add_parser("check", parents=[sets, sd], help="copy check, weight sweep grids, metrics and report.md for a finished run")
    p.add_argument("run_dir", type=Path, help="a run folder (holds preset.toml)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("grayscale", parents=[sets, sd, out, running], help="the article's recipe on your images: A (and B, else A in grayscale)")
    p.add_argument("a", type=Path, help="image A")
    p.add_argument("b", type=Path, nargs="?", help="image B (default: A converted to grayscale)")
    p.add_argument("--model", type=Path, required=True, help="base SD checkpoint")
    p.set_defaults(func=cmd_grayscale)
    p = sub.add_parser("demo", parents=[sets, sd, out, running], help="the whole method on the demo model at 64 px (CPU), with the copy check and weight sweep")
    p.add_argument(
        "--world", action="store_true", help="on the world model (the demo model taught three scenes): every difference LoRA judged on other content"
    )
    p.add_argument(
        "--preset", type=Path, help="another preset on the demo's (or the world's) model, A and tokenizer, e.g. bench/world/article.toml (the article's steps)"
    )
    p.set_defaults(func=cmd_demo)
    return ap


def _full(p: Path) -> Path:
    return p.expanduser().resolve()


def _overrides(args) -> dict[str, Any]:
    """Typed overrides from command-line flags (they win over the preset and --set)."""
    out: dict[str, Any] = {}
    if getattr(args, "output_dir", None) is not None:
        out["output_dir"] = _full(args.output_dir)
    if getattr(args, "baseline", False):
        out["baseline"] = True
    return out


def _opts(args):
    from cml.resume import RunOptions

    mode = "quiet" if args.quiet else "verbose" if args.verbose else "normal"
    return RunOptions(mode=mode, force=args.force, from_stage=args.from_stage)


def _finish(summary) -> int:
    from cml.console import say

    say(f"finished in {summary.seconds:.0f} s; run folder: {summary.run_dir}")
    for name, path in summary.kept_outputs.items():
        say(f"  {name}: {path}")
    return 0


def _cmd_run(args, preset: str | Path, overrides: dict[str, Any]) -> int:
    from cml import pipeline
    from cml.prepare import prepare
    from cml.runner import RunLock

    plan, sd = prepare(preset, args.sets, args.sd_scripts, overrides=overrides)
    opts = _opts(args)
    from cml.resume import check_options

    check_options(plan, opts)  # before the lock: a refused run leaves no folder behind
    with RunLock(plan.run_dir) as lock:  # held through the check, which writes check/ and report.md
        rc = _finish(pipeline.run(plan, sd, opts, lock))
        if plan.preset.check.enabled:
            _check(plan, sd, "quiet" if args.quiet else "normal")
    return rc


def _check(plan, sd, mode: str) -> None:
    from cml.console import say
    from cml.report.check import run_check
    from cml.report.markdown import print_table

    say("check: copy check, weight sweeps and metrics with sd-scripts' generator ...")
    result = run_check(plan, sd, mode)
    print_table(result)
    for g in result.grids:
        say(f"  grid: {g}")
    say(f"  report: {plan.run_dir / 'report.md'}")


def cmd_setup(args) -> int:
    from cml.sdscripts.checkout import setup
    from cml.sdscripts.requirements import install_requirements

    sd = setup(args.source)
    if args.deps:
        install_requirements(sd)
    return 0


def cmd_doctor(args) -> int:
    from cml.doctor import diagnose, report

    return report(diagnose(args.sd_scripts))


def cmd_presets(args) -> int:
    from cml.preset.shipped import describe, shipped_presets

    if args.reference:
        from cml.preset.reference import reference

        sys.stdout.write(reference() + "\n")
        return 0
    for name, path in shipped_presets().items():
        print(f"{name:16} {describe(path)}")
    print("\nuse one by name (`cml show-config grayscale`, `cml run grayscale --set ...`), or copy it from `cml show-config NAME` and edit")
    return 0


def cmd_show_config(args) -> int:
    import tomli_w

    from cml.preset import find_preset, load_preset

    preset, _ = load_preset(find_preset(args.preset), args.sets)
    sys.stdout.write(tomli_w.dumps(preset.to_toml_dict()))
    return 0


def cmd_plan(args) -> int:
    from cml.console import say
    from cml.prepare import prepare
    from cml.render.run_folder import render
    from cml.rundir import disk_space
    from cml.runner import RunLock

    # Planning needs no sd-scripts: without it, commands.sh names the sd-scripts/ submodule (or CML_SD_SCRIPTS).
    plan, sd = prepare(args.preset, args.sets, args.sd_scripts, overrides=_overrides(args), need_sd=False)
    with RunLock(plan.run_dir), disk_space("the run's kohya files", plan.run_dir):  # never rewrite the files of a run in progress
        warn_replanned(plan)
        files = render(plan, sd.path if sd.path.is_absolute() else None)
    say(f"wrote {len(files)} files for {len(plan.stages)} stages in {plan.run_dir}")
    for st in plan.stages:
        say(f"  {st.name}: {st.what}")
    return 0


def warn_replanned(plan) -> None:
    """`cml plan` over a finished run: the stages whose finished work was made from other settings are named (their
    files now describe the new settings; `cml run` replaces that work only with --force)."""
    from cml.console import say
    from cml.resume import output_state

    for st in plan.stages:
        if st.protected and st.output.is_file():
            state = output_state(st, plan)
            if state.intact and not state.good:
                say(
                    f"note: {st.output.relative_to(plan.run_dir)} was made from other settings than this plan's: its stage files now describe the new ones (`cml run` replaces it only with --force)"
                )


def cmd_run(args) -> int:
    return _cmd_run(args, args.preset, _overrides(args))


def cmd_check(args) -> int:
    from cml.prepare import prepare
    from cml.runner import RunLock

    preset = args.run_dir / "preset.toml"
    if not preset.is_file():
        raise InputError("not a cml run folder (no preset.toml)", str(args.run_dir), "give the folder that `cml run` printed")
    # The folder may have moved or been renamed since the run: the run is where it is now.
    plan, sd = prepare(preset, args.sets, args.sd_scripts, run_dir=_full(args.run_dir))
    with RunLock(plan.run_dir):
        _check(plan, sd, "quiet" if args.quiet else "normal")
    return 0


def cmd_grayscale(args) -> int:
    overrides = _overrides(args) | {"base_model": _full(args.model), "source": [_full(args.a)]}
    if args.b is not None:
        overrides["targets.grayscale"] = {"images": [_full(args.b)]}
    from cml.preset import shipped_presets

    return _cmd_run(args, shipped_presets()["grayscale"], overrides)


def cmd_demo(args) -> int:
    from cml.demo import prepare_demo

    chosen = _full(args.preset) if args.preset is not None else None
    if chosen is not None and not chosen.is_file():
        raise InputError(f"{args.preset}: no such preset file", "--preset", "give a preset .toml, e.g. bench/world/article.toml in a cml checkout")
    preset, assets = prepare_demo(args.sd_scripts, world=args.world)
    return _cmd_run(args, chosen or preset, assets | _overrides(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyboardInterrupt, Terminated):
        print("cml: interrupted; finished stages are kept, re-run the same command to resume", file=sys.stderr)
        return 130
    except CmlError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"cml: error: {e.line()}" if "\n" not in e.line() else "cml: error:\n" + e.line(), file=sys.stderr)
        return e.exit_code
    except OSError as e:
        from cml.rundir import disk_full

        if getattr(args, "debug", False):
            raise
        if disk_full(e):
            print(
                f"cml: error: {e.filename or 'a file'}: the disk is full ({e.strerror}) -- free space, then re-run: finished stages are kept", file=sys.stderr
            )
        else:
            print(
                f"cml: error: {e.filename or ''}: {e.strerror or e} -- check the path and its permissions (re-run with --debug for the traceback)",
                file=sys.stderr,
            )
        return 2
    except Exception as e:  # a bug: say so in one line, traceback with --debug
        if getattr(args, "debug", False):
            raise
        print(f"cml: internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", file=sys.stderr)
        return 1
