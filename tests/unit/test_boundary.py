"""The two processes, both ways: cml/sd_process/ runs inside sd-scripts' Python and imports only the standard library,
sd-scripts and what it brings, and itself; every other module of cml runs in cml's own process and never imports
torch (nor anything that imports it), sd-scripts, or cml/sd_process/."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CML = ROOT / "cml"
SD_PROCESS = CML / "sd_process"
# What sd-scripts is and brings (its requirements.txt): allowed inside its process only.
SD_SIDE = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "bitsandbytes", "safetensors", "library", "networks", "numpy", "PIL"}
SD_SIDE |= {"train_network", "sdxl_train_network", "flux_train_network", "sd3_train_network", "anima_train_network", "lumina_train_network"}
SD_SIDE |= {"hunyuan_image_train_network", "gen_img", "sdxl_gen_img", "tensorboard", "einops", "huggingface_hub"}
# Heavy libraries cml's process must never import: they import torch, or are sd-scripts itself.
NEVER_IN_CML = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "bitsandbytes", "library", "networks"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top module) of every import in a file, nested ones included; relative imports as 'cml...'."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


def crossings(files: list[Path], allowed) -> list[str]:
    return [f"{f.relative_to(ROOT)}:{line}: imports {name}" for f in files for line, name in imports(f) if not allowed(name)]


def sd_process_files() -> list[Path]:
    return sorted(SD_PROCESS.rglob("*.py"))


def cml_process_files() -> list[Path]:
    return sorted(p for p in CML.rglob("*.py") if SD_PROCESS not in p.parents)


def in_sd_process(name: str) -> bool:
    top = name.split(".")[0]
    return name == "cml.sd_process" or name.startswith("cml.sd_process.") or top in sys.stdlib_module_names or top in SD_SIDE


def in_cml_process(name: str) -> bool:
    return not (name == "cml.sd_process" or name.startswith("cml.sd_process.") or name.split(".")[0] in NEVER_IN_CML)


def test_sd_process_imports_only_the_standard_library_sd_scripts_and_itself():
    assert sd_process_files(), "no cml/sd_process modules found"
    assert crossings(sd_process_files(), in_sd_process) == []


def test_cml_process_never_imports_torch_sd_scripts_or_sd_process():
    assert crossings(cml_process_files(), in_cml_process) == []


@pytest.mark.parametrize(
    ("text", "allowed", "crossing"),
    [
        ("import json\nfrom cml.model_files import sha256_of\n", in_sd_process, "m.py:2: imports cml.model_files"),
        ("import json\ndef g():\n    import torch\n", in_cml_process, "m.py:3: imports torch"),
        ("from cml.sd_process import patches\n", in_cml_process, "m.py:1: imports cml.sd_process"),
    ],
)
def test_a_crossing_is_named(text, allowed, crossing, tmp_path, monkeypatch):
    """The checks above can fail: a module that crosses, either way, is named with its line."""
    (tmp_path / "m.py").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert crossings([tmp_path / "m.py"], allowed) == [crossing]


def test_every_sd_process_module_cml_names_exists():
    """cml's side names sd_process modules as strings (python -m ..., network_module): each one is a real module."""
    names = set()
    for f in cml_process_files():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cml.sd_process."):
                names.add(node.value)
    assert names, "cml names no sd_process module"
    missing = [n for n in sorted(names) if not (ROOT / (n.replace(".", "/") + ".py")).is_file()]
    assert missing == []


def test_cml_commands_run_without_torch_in_their_process():
    """At run time too: importing every module of cml's side leaves torch, transformers and diffusers unimported."""
    mods = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in cml_process_files() if p.name != "__main__.py"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'accelerate', 'bitsandbytes') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
