"""The run-folder writer: every kohya file of a plan (dataset.toml, train.toml, gui.json, command.json,
commands.sh, the staged images, preset.toml and the run's README), written into the run folder cml owns."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import tomli_w

from cml.files import atomic_write
from cml.images import save_png
from cml.plan import Plan, Role, Stage
from cml.render.gui import gui_json, gui_note, has_gui
from cml.render.scripts import stage_argv
from cml.render.train_config import dataset_toml, training_toml
from cml.rundir import mark, remove_inside

# Where commands.sh goes when cml found no sd-scripts: a folder the user names (a relative "sd-scripts" would mean
# wherever the script is started from).
SD_SCRIPTS_UNKNOWN = '"${CML_SD_SCRIPTS:?set CML_SD_SCRIPTS to your sd-scripts folder (cml setup --deps makes one)}"'


def commands_sh(plan: Plan, sd_path: Path | None) -> str:
    """The run's commands as a shell script; ``sd_path`` None: cml found no sd-scripts (CML_SD_SCRIPTS names it)."""
    lines = [
        "#!/usr/bin/env bash",
        "# The sd-scripts commands of this run, as cml runs them. Run from anywhere with sd-scripts' Python active.",
        "# cml writes each output under its stage's work/ folder, checks it, then moves it to its final name.",
        "# cml also writes into each kept LoRA's metadata its provenance (cml_*) and a name that tells runs apart in",
        "# A1111 (ss_output_name = <run>-<name>); these commands leave sd-scripts' own metadata as it is.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(sd_path)) if sd_path is not None else SD_SCRIPTS_UNKNOWN}",
        'export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # networks/*.py import library/',
        "",
    ]
    for st in plan.stages:
        argv = stage_argv(plan, st)
        lines.append(f"# {st.name}: {st.what}")
        lines.append(shlex.join(["mkdir", "-p", str(st.work_dir)]))  # the trainers make theirs; merge_lora.py does not
        lines.append(shlex.join(["python", *argv[1:]]))
        lines.append(shlex.join(["mv", str(st.work_dir / st.output.name), str(st.output)]))
        lines.append("")
    return "\n".join(lines)


RUN_README = """# {name}: files of this run

| stage | what | output |
|---|---|---|
{rows}

Per training stage folder:
- `dataset.toml`: kohya dataset config (`--dataset_config`, or the kohya_ss GUI's "Dataset config" field).
- `train.toml`: every other option, for `train_network.py --config_file train.toml`.
- `gui.json`: the same stage for the kohya_ss GUI: LoRA tab -> "Load config".
- `images/`: the staged images (RGB PNG); a caption `.txt` beside each only when the caption is not empty.
- `log.txt`, `logs/`: the trainer's output and TensorBoard logs; `record.json`: what the output was made from.

`commands.sh` holds the exact commands; `preset.toml` the fully resolved preset (itself a valid preset).
{gui_note}"""


def write_file(path: Path, text: str) -> None:
    """Write only when the content changed (keeps mtimes stable for resumed runs)."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write(path, text)


def stage_images(plan: Plan, stage: Stage) -> None:
    """images/ holds exactly the stage's images (and captions): anything else there (an image of an earlier, longer
    source list; sd-scripts' cached latents, *.npz) would be trained on, or trusted, without its fingerprint saying so.
    The direct method's A images go to images_a/ under the same names: the trainer pairs them by name."""
    folders = [(stage.images_dir, stage.images)] + ([(stage.images_a_dir, stage.images_a)] if stage.images_a else [])
    for folder, images in folders:
        keep = set()
        for i, img in enumerate(images):
            save_png(img, folder / f"{i:03d}.png")
            keep.add(f"{i:03d}.png")
            if stage.train.caption:  # sd-scripts refuses empty caption files; no file means an empty caption
                write_file(folder / f"{i:03d}.txt", stage.train.caption)
                keep.add(f"{i:03d}.txt")
        for entry in sorted(folder.iterdir()):
            if entry.name not in keep:
                remove_inside(entry, plan.run_dir)


def render(plan: Plan, sd_path: Path | None) -> list[Path]:
    """Write every kohya file of the plan into the run folder (``sd_path`` None: sd-scripts not found). Returns the
    files written."""
    written = []
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    mark(plan.run_dir)
    for st in plan.stages:
        st.dir.mkdir(parents=True, exist_ok=True)
        if st.kind == "train":
            stage_images(plan, st)
            files = [("dataset.toml", tomli_w.dumps(dataset_toml(st))), ("train.toml", tomli_w.dumps(training_toml(plan, st)))]
            if st.role is Role.DIRECT:  # the GUI cannot run cml's trainer: no gui.json (the run's README says so)
                files.append(("dataset_a.toml", tomli_w.dumps(dataset_toml(st, st.images_a_dir))))
            elif has_gui(plan):
                files.append(("gui.json", json.dumps(gui_json(plan, st), indent=2, ensure_ascii=False) + "\n"))
            for name, text in files:
                write_file(st.dir / name, text)
                written.append(st.dir / name)
        else:
            write_file(
                st.dir / "command.json",
                json.dumps({"cwd": str(sd_path) if sd_path is not None else None, "argv": stage_argv(plan, st)}, indent=2, ensure_ascii=False) + "\n",
            )
            written.append(st.dir / "command.json")
    write_file(plan.run_dir / "commands.sh", commands_sh(plan, sd_path))
    write_file(plan.run_dir / "preset.toml", tomli_w.dumps(plan.preset.to_toml_dict()))
    rows = "\n".join(f"| `{s.name}/` | {s.what} | `{s.output.relative_to(plan.run_dir)}` |" for s in plan.stages)
    write_file(plan.run_dir / "README.md", RUN_README.format(name=plan.preset.name, rows=rows, gui_note=gui_note(plan)))
    written += [plan.run_dir / "commands.sh", plan.run_dir / "preset.toml", plan.run_dir / "README.md"]
    return written
