"""`cml setup --source` from a local snapshot lacking sd-scripts' large files, then `cml doctor`."""

import subprocess

import pytest

from cml import PINNED_SD_SCRIPTS_COMMIT
from tests.conftest import run_cml

pytestmark = pytest.mark.full  # the full tier: `make test-full`

BIG = 4 * 2**20  # the search library's snapshots leave out files of 4 MiB and more


def _git(*args, cwd=None, stdin=None):
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def snapshot(sd_scripts, tmp_path_factory):
    """A bare repository holding the pinned commit's history without any blob of 4 MiB or more."""
    if sd_scripts.commit is None:
        pytest.skip(f"sd-scripts at {sd_scripts.path} is not a git checkout; cannot make a snapshot of it")
    src = tmp_path_factory.mktemp("snap") / "sd-scripts.git"
    _git("init", "-q", "--bare", str(src))
    objs = _git("rev-list", "--objects", "--missing=allow-any", PINNED_SD_SCRIPTS_COMMIT, cwd=sd_scripts.path)
    ids = "\n".join(line.split()[0] for line in objs.splitlines()) + "\n"
    sizes = _git("cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)", cwd=sd_scripts.path, stdin=ids)
    keep = [f.split()[0] for f in sizes.splitlines() if "missing" not in f and not (f.split()[1] == "blob" and int(f.split()[2]) >= BIG)]
    _git("pack-objects", "-q", str(src / "objects" / "pack" / "pack"), cwd=sd_scripts.path, stdin="\n".join(keep) + "\n")
    _git("update-ref", "refs/heads/main", PINNED_SD_SCRIPTS_COMMIT, cwd=src)
    _git("symbolic-ref", "HEAD", "refs/heads/main", cwd=src)
    return src


def test_setup_from_a_snapshot_lacking_large_files_then_doctor(snapshot, tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "CML_SD_SCRIPTS": ""}
    r = run_cml("setup", "--source", str(snapshot), env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    dest = tmp_path / "data" / "cml" / "sd-scripts"
    assert _git("rev-parse", "HEAD", cwd=dest).strip() == PINNED_SD_SCRIPTS_COMMIT
    assert (dest / "train_network.py").is_file() and (dest / "networks" / "merge_lora.py").is_file()
    assert not (dest / "bitsandbytes_windows").exists()
    assert "the source lacks" in r.stdout and "configs/qwen3_06b/tokenizer.json" in r.stdout  # named because it is missing, not excluded
    again = run_cml("setup", "--source", str(snapshot), env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout

    import shutil

    from cml.demo import tokenizer_dir

    shutil.copytree(tokenizer_dir(), tmp_path / "cache" / "tokenizers")  # offline here: the tokenizer must be cached
    doc = run_cml("doctor", env={"CML_SD_SCRIPTS": str(dest), "CML_CACHE_DIR": str(tmp_path / "cache")})
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "CPU only" in doc.stdout or "CUDA:" in doc.stdout
    assert PINNED_SD_SCRIPTS_COMMIT[:10] in doc.stdout and "sd-scripts imports" in doc.stdout


def test_setup_refuses_a_source_without_the_pinned_commit(tmp_path):
    empty = tmp_path / "empty.git"
    _git("init", "-q", "--bare", str(empty))
    r = run_cml("setup", "--source", str(empty), env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "cml" / "sd-scripts").exists()
