"""Getting sd-scripts at the pinned commit: the submodule, or a (sparse) clone from GitHub or a local source."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cml import PINNED_SD_SCRIPTS_COMMIT
from cml.errors import CmlError, InputError
from cml.paths import checkout_root, data_dir, submodule
from cml.sdscripts.lookup import ENTRY_SCRIPTS, SdScripts, candidates, git, is_checkout, locate, read_commit

UPSTREAM = "https://github.com/kohya-ss/sd-scripts.git"
# Files SD1/SD2/SDXL LoRA training needs: a source that lacks one of them is refused.
NEEDED_PREFIXES = ("library/", "networks/", "requirements.txt", "setup.py") + ENTRY_SCRIPTS
# Old bitsandbytes DLLs for Windows that no trainer reads (bitsandbytes comes from pip). Everything else the
# source holds is checked out: a full clone keeps e.g. Anima's configs/qwen3_06b/tokenizer.json.
SPARSE_EXCLUDES = ("/bitsandbytes_windows/",)


def _missing_blobs(repo: Path, commit: str) -> list[str]:
    """Paths whose content the source lacks (snapshots leave out files of 4 MiB and more)."""
    tree = git(["ls-tree", "-r", commit], cwd=repo).stdout.splitlines()
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
    have = git(["cat-file", "-e", f"{PINNED_SD_SCRIPTS_COMMIT}^{{commit}}"], cwd=repo, check=False, timeout=30)
    if have.returncode != 0 and fetch_from:
        git(["fetch", "--quiet", fetch_from, PINNED_SD_SCRIPTS_COMMIT], cwd=repo, timeout=300, check=False)
        have = git(["cat-file", "-e", f"{PINNED_SD_SCRIPTS_COMMIT}^{{commit}}"], cwd=repo, check=False, timeout=30)
    if have.returncode != 0:
        raise InputError(f"the source does not hold the pinned commit {PINNED_SD_SCRIPTS_COMMIT}", "--source", "give a newer sd-scripts clone or snapshot")
    missing = _missing_blobs(repo, PINNED_SD_SCRIPTS_COMMIT)
    needed = [m for m in missing if m.startswith(NEEDED_PREFIXES)]
    if needed:
        raise InputError(f"the source lacks files cml needs: {', '.join(needed[:5])}", "--source", "give a complete sd-scripts source")
    patterns = ["/*", *(f"!{p}" for p in SPARSE_EXCLUDES), *(f"!/{m}" for m in missing)]
    git(["config", "core.sparseCheckout", "true"], cwd=repo)
    # Written directly: `git sparse-checkout set` would first try to check out the default branch.
    info = Path(git(["rev-parse", "--git-path", "info"], cwd=repo).stdout.strip())
    info = info if info.is_absolute() else repo / info
    info.mkdir(parents=True, exist_ok=True)
    (info / "sparse-checkout").write_text("\n".join(patterns) + "\n")
    git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", PINNED_SD_SCRIPTS_COMMIT], cwd=repo, timeout=300)
    return sorted(missing)


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
            p = git(["submodule", "update", "--init", "--", "sd-scripts"], cwd=root, timeout=60, check=False)
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
        clone = git(["clone", "--quiet", "--no-checkout", source, str(part)], timeout=600, check=False)
        if clone.returncode != 0:
            why = (clone.stderr.strip().splitlines() or [f"git exited with {clone.returncode}"])[-1].removeprefix("fatal: ")
            raise InputError(
                f"sd-scripts cannot be cloned from {source} ({why})",
                "--source",
                "give the path of a local sd-scripts clone or snapshot, or its URL (it must hold commit 48d368fa)",
            )
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
    lacks = f"; the source lacks (none of them read by cml's trainers): {', '.join(left_out)}" if left_out else ""
    log(f"sd-scripts {PINNED_SD_SCRIPTS_COMMIT[:10]} checked out at {dest} (without bitsandbytes_windows/){lacks}")
    return SdScripts(dest.resolve(), read_commit(dest), "cml setup's data directory")
