"""Finding, setting up and describing kohya sd-scripts at the pinned commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.errors import CmlError, InputError
from cml.paths import cache_root, checkout_root, data_dir, submodule

UPSTREAM = "https://github.com/kohya-ss/sd-scripts.git"
# What cml runs; a checkout without these cannot work.
ENTRY_SCRIPTS = ("train_network.py", "sdxl_train_network.py", "networks/merge_lora.py", "networks/sdxl_merge_lora.py", "networks/lora.py")
# Files SD1/SD2/SDXL LoRA training needs: a source that lacks one of them is refused.
NEEDED_PREFIXES = ("library/", "networks/", "requirements.txt", "setup.py") + ENTRY_SCRIPTS
# Large files a snapshot may lack that SD1/SD2/SDXL LoRA training never reads.
SPARSE_EXCLUDES = ("/bitsandbytes_windows/", "/configs/qwen3_06b/tokenizer.json")


class SdScriptsNotFound(InputError):
    """No sd-scripts checkout anywhere cml looks."""


@dataclass
class SdScripts:
    path: Path
    commit: str | None  # None when not a git checkout
    found_by: str
    present: bool = True  # False: not found; path is where the submodule would be (cml plan writes files anyway)

    @property
    def pinned(self) -> bool:
        return self.commit == PINNED_SD_SCRIPTS_COMMIT

    def describe(self) -> str:
        c = self.commit[:10] if self.commit else "unknown commit"
        pin = "pinned" if self.pinned else f"NOT the pinned {PINNED_SD_SCRIPTS_COMMIT[:10]}"
        return f"{self.path} ({c}, {pin}; found by {self.found_by})"


def _git(args: list[str], cwd: Path | None = None, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_HTTP_LOW_SPEED_LIMIT="1000", GIT_HTTP_LOW_SPEED_TIME="20", LC_ALL="C")
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise CmlError(f"git {' '.join(args)} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}")
    return p


# A copy without .git (cml's GPU bundle) names its commit in this file.
COMMIT_FILE = ".cml-sd-scripts-commit"


def read_commit(path: Path) -> str | None:
    if not (path / ".git").exists():
        try:
            return (path / COMMIT_FILE).read_text().strip() or None
        except OSError:
            return None
    try:
        p = _git(["rev-parse", "HEAD"], cwd=path, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def is_checkout(path: Path) -> bool:
    return all((path / s).is_file() for s in ENTRY_SCRIPTS)


def candidates(option: str | None = None) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if option:
        out.append((Path(option).expanduser(), "--sd-scripts"))
    env = os.environ.get("CML_SD_SCRIPTS")
    if env:
        out.append((Path(env).expanduser(), "CML_SD_SCRIPTS"))
    sub = submodule()
    if sub is not None:
        out.append((sub, "the sd-scripts/ submodule"))
    out.append((data_dir(), "cml setup's data directory"))
    return out


def locate(option: str | None = None) -> SdScripts:
    """The first usable sd-scripts, in the documented order. An explicit choice that is unusable is an error."""
    for path, how in candidates(option):
        if is_checkout(path):
            return SdScripts(path.resolve(), read_commit(path), how)
        if how in ("--sd-scripts", "CML_SD_SCRIPTS"):
            raise InputError(f"{path} is not an sd-scripts checkout (no train_network.py)", how, "point it at a kohya-ss/sd-scripts folder, or run `cml setup`")
    looked = ["--sd-scripts", "CML_SD_SCRIPTS"] + (["the sd-scripts/ submodule"] if submodule() is not None else []) + [str(data_dir())]
    raise SdScriptsNotFound(
        f"sd-scripts not found (looked at {', '.join(looked[:-1])} and {looked[-1]})",
        None,
        f"run `{setup_hint()}` (offline: `cml setup --source PATH_OR_URL --deps` with an sd-scripts clone or snapshot)",
    )


def setup_hint() -> str:
    """The set-up command for this install: the Makefile's in a clone, cml's own otherwise (a wheel, Windows)."""
    return "make setup" if checkout_root() is not None else "cml setup --deps"


def commit_warning(sd: SdScripts) -> str | None:
    if sd.pinned:
        return None
    return (
        f"warning: sd-scripts at {sd.path} is at {sd.commit or 'an unknown commit'}, not the pinned "
        f"{PINNED_SD_SCRIPTS_COMMIT[:10]}; cml is tested only against the pinned commit"
    )


# ------------------------------------------------------------------ setup


def _missing_blobs(repo: Path, commit: str) -> list[str]:
    """Paths whose content the source lacks (snapshots leave out files of 4 MiB and more)."""
    tree = _git(["ls-tree", "-r", commit], cwd=repo).stdout.splitlines()
    entries = [(line.split()[2], line.split("\t", 1)[1]) for line in tree if line.split()[1] == "blob"]
    p = subprocess.run(
        ["git", "cat-file", "--batch-check"], cwd=repo, input="\n".join(sha for sha, _ in entries) + "\n", capture_output=True, text=True, timeout=120
    )
    missing = []
    for (_sha, path), line in zip(entries, p.stdout.splitlines()):
        if line.endswith("missing"):
            missing.append(path)
    return missing


def checkout_pinned(repo: Path, fetch_from: str | None = None) -> list[str]:
    """Sparse-checkout the pinned commit in ``repo`` (a clone with no checkout). Returns left-out paths."""
    have = _git(["cat-file", "-e", f"{PINNED_SD_SCRIPTS_COMMIT}^{{commit}}"], cwd=repo, check=False, timeout=30)
    if have.returncode != 0 and fetch_from:
        _git(["fetch", "--quiet", fetch_from, PINNED_SD_SCRIPTS_COMMIT], cwd=repo, timeout=300, check=False)
        have = _git(["cat-file", "-e", f"{PINNED_SD_SCRIPTS_COMMIT}^{{commit}}"], cwd=repo, check=False, timeout=30)
    if have.returncode != 0:
        raise CmlError(f"the source does not hold the pinned commit {PINNED_SD_SCRIPTS_COMMIT}", fix="give a newer sd-scripts clone or snapshot")
    missing = _missing_blobs(repo, PINNED_SD_SCRIPTS_COMMIT)
    needed = [m for m in missing if m.startswith(NEEDED_PREFIXES)]
    if needed:
        raise CmlError(f"the source lacks files cml needs: {', '.join(needed[:5])}", fix="give a complete sd-scripts source")
    patterns = ["/*", *(f"!{p}" for p in SPARSE_EXCLUDES), *(f"!/{m}" for m in missing)]
    _git(["config", "core.sparseCheckout", "true"], cwd=repo)
    # Written directly: `git sparse-checkout set` would first try to check out the default branch.
    info = Path(_git(["rev-parse", "--git-path", "info"], cwd=repo).stdout.strip())
    info = info if info.is_absolute() else repo / info
    info.mkdir(parents=True, exist_ok=True)
    (info / "sparse-checkout").write_text("\n".join(patterns) + "\n")
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", PINNED_SD_SCRIPTS_COMMIT], cwd=repo, timeout=300)
    return sorted(set(missing) | {p.strip("/") for p in SPARSE_EXCLUDES})


def setup(source: str | None = None, log=print) -> SdScripts:
    """Get sd-scripts at the pinned commit. Idempotent: an existing pinned checkout is kept."""
    # With --source the user asks for cml's own copy; without, any pinned checkout will do.
    places = [(data_dir(), "cml setup's data directory")] if source else candidates()
    for path, how in places:
        if is_checkout(path) and read_commit(path) == PINNED_SD_SCRIPTS_COMMIT:
            log(f"sd-scripts already set up at the pinned commit: {path} ({how}); nothing to do")
            return SdScripts(path.resolve(), PINNED_SD_SCRIPTS_COMMIT, how)
    root, sub = checkout_root(), submodule()
    if source is None and root is not None and sub is not None and (root / ".git").exists():
        log(f"initialising the sd-scripts submodule from {UPSTREAM} ...")
        try:
            p = _git(["submodule", "update", "--init", "--", "sd-scripts"], cwd=root, timeout=60, check=False)
            ok = p.returncode == 0 and is_checkout(sub)
        except subprocess.TimeoutExpired:
            ok, p = False, None
        if ok:
            return locate()
        reason = (p.stderr.strip().splitlines() or ["no output"])[-1] if p is not None else "timed out"
        raise CmlError(
            f"could not initialise the sd-scripts submodule ({reason})",
            fix="without network, run `cml setup --source PATH_OR_URL` with a local sd-scripts clone or snapshot",
        )
    source = source or UPSTREAM  # an installed cml (no clone): its own copy, from GitHub unless told otherwise
    dest = data_dir()
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.parent.mkdir(parents=True, exist_ok=True)
    log(f"cloning sd-scripts from {source} into {dest} ...")
    try:
        _git(["clone", "--quiet", "--no-checkout", source, str(part)], timeout=600)
        left_out = checkout_pinned(part, fetch_from=source)
    except subprocess.TimeoutExpired:
        shutil.rmtree(part, ignore_errors=True)
        raise CmlError(f"cloning sd-scripts from {source} timed out", fix="check the URL or give a local path") from None
    except CmlError:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    part.rename(dest)
    log(f"sd-scripts {PINNED_SD_SCRIPTS_COMMIT[:10]} checked out at {dest}; left out (not needed for SD1/SD2/SDXL LoRA): {', '.join(left_out)}")
    return SdScripts(dest.resolve(), read_commit(dest), "cml setup's data directory")


def python_env(sd: SdScripts) -> dict[str, str]:
    """Environment for sd-scripts subprocesses: unbuffered output, offline hub unless the user said otherwise."""
    env = dict(os.environ)
    # sd-scripts' requirements.txt installs it with `-e .`; cml puts it on the path instead, so one venv
    # serves any sd-scripts folder (networks/*.py import `library`).
    env["PYTHONPATH"] = os.pathsep.join([str(sd.path), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    compiled = cache_root() / "torch-compile"  # train.torch_compile: inductor's and triton's caches live in cml's cache
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compiled / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(compiled / "triton"))
    return env


def check_imports(sd: SdScripts, timeout: float = 300) -> str | None:
    """None when sd-scripts' own modules import in this Python; else the last error line."""
    code = "import library.train_util, library.config_util, networks.lora, library.sdxl_train_util"
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=sd.path, capture_output=True, text=True, timeout=timeout, env=python_env(sd))
    except subprocess.TimeoutExpired:
        return "importing sd-scripts timed out"
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {p.returncode}"


def install_requirements(sd: SdScripts, log=print) -> None:
    """pip-install sd-scripts' pinned requirements.txt into this Python, once per requirements content.

    Its ``-e .`` line is left out: cml puts sd-scripts on PYTHONPATH instead, so one environment
    serves whichever sd-scripts folder is found.
    """
    import hashlib
    import tempfile

    req = sd.path / "requirements.txt"
    text = req.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("-e")]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    stamp = Path(sys.prefix) / ".cml-sd-scripts-requirements"
    if stamp.exists() and stamp.read_text().strip() == digest:
        log("sd-scripts requirements already installed; nothing to do")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    log(f"installing sd-scripts requirements ({req}) into {sys.prefix} ...")
    from cml.install import install

    p = install(["-r", f.name], log)
    os.unlink(f.name)
    if p.returncode != 0:
        raise CmlError(f"pip could not install sd-scripts' requirements (exit {p.returncode})", fix="see pip's output above")
    stamp.write_text(digest + "\n")


# The tokenizers sd-scripts loads per family (library/strategy_sd.py, strategy_sdxl.py at the pinned commit), from
# tokenizer_cache_dir/<id with "/" as "_"> when there, else from the Hugging Face hub (then saved to the cache).
TOKENIZERS = {
    "sd1": ("openai/clip-vit-large-patch14",),
    "sd2": ("stabilityai/stable-diffusion-2",),
    "sdxl": ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
}
HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def missing_tokenizers(family: str, cache_dir: Path) -> list[str]:
    """Tokenizers sd-scripts would have to download: in neither tokenizer_cache_dir nor the hub's own cache."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    out = []
    for model_id in TOKENIZERS[family]:
        if (cache_dir / model_id.replace("/", "_")).is_dir():
            continue
        if (hub / f"models--{model_id.replace('/', '--')}" / "snapshots").is_dir():
            continue
        out.append(model_id)
    return out


def check_tokenizers(family: str, cache_dir: Path) -> None:
    """One line, before anything runs, when sd-scripts could neither find nor download its tokenizer."""
    missing = missing_tokenizers(family, cache_dir)
    if missing and not hub_reachable():
        raise InputError(
            f"sd-scripts needs the tokenizer {', '.join(missing)}: it is not in {cache_dir} and {HUB_HOST} cannot be reached (offline)",
            "tokenizer_cache_dir",
            "run once with network (it is then kept in tokenizer_cache_dir), or set tokenizer_cache_dir to a folder that holds it",
        )
