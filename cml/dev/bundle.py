"""A bundle for a CUDA machine without network: wheels, sd-scripts without .git, and the project.

``make gpu-bundle`` (here, with network) builds ``.gpu-bundle/``:
- ``wheels/``: the exact versions this environment runs (sd-scripts' pinned requirements and cml's own),
  for the GPU machine's Python and platform, without torch (the GPU machine's torch matches its driver);
  bitsandbytes keeps only the CUDA builds named by ``--cuda`` (its wheel carries one per CUDA version);
- ``sd-scripts.tar.gz``: the pinned sd-scripts checkout's files, no ``.git``;
- ``project.tar.gz``: this project's tracked files; ``manifest.json``: what is in it.

``make gpu-offline`` (there, no network) installs the wheels into a folder of their own with
``python -m cml.dev.bundle install`` (standard library only: nothing is installed yet), then runs
``make test-gpu`` and ``make bench-gpu``. Versions are the ones the CPU test suite passed with.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

from cml.dev import root

ROOT = root()
DEFAULT_DIR = ROOT / ".gpu-bundle"
# Distributions the GPU run needs beyond a CUDA machine's usual PyTorch stack (torch, torchvision, numpy,
# pillow, opencv-python-headless, tensorboard, rich, scikit-image, matplotlib, psutil, filelock, pytest):
# the sd-scripts pinned requirements that are imported on cml's paths, their pinned-range dependencies, and cml's own.
PACKAGES = (
    "accelerate",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "diffusers",
    "importlib-metadata",
    "safetensors",
    "bitsandbytes",
    "einops",
    "ftfy",
    "wcwidth",
    "toml",
    "voluptuous",
    "imagesize",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "tomli-w",
)
# Left out: the optimizers sd-scripts imports only when chosen (lion-pytorch, schedulefree, prodigyopt, ...),
# and opencv-python (CUDA stacks ship opencv-python-headless, which provides the same cv2).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def local_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"bundle: {dist} is not installed in {sys.prefix}: run `make setup` first (the bundle holds the tested versions)") from None


def prune_bitsandbytes(wheel: Path, cuda: tuple[str, ...]) -> int:
    """Rewrite the wheel without the native libraries of other CUDA/ROCm versions; returns bytes saved."""
    keep = {f"libbitsandbytes_cuda{c}.so" for c in cuda} | {"libbitsandbytes_cpu.so"}
    before = wheel.stat().st_size
    out = wheel.with_suffix(".tmp")
    dropped: set[str] = set()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if name.startswith("libbitsandbytes_") and name.endswith(".so") and name not in keep:
                dropped.add(info.filename)
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(ln for ln in data.decode().splitlines(True) if ln.split(",", 1)[0] not in dropped).encode()
            dst.writestr(info, data)
    missing = keep - {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(out).namelist()}
    if missing - {"libbitsandbytes_cpu.so"}:
        out.unlink()
        raise SystemExit(f"bundle: bitsandbytes {wheel.name} has no {', '.join(sorted(missing))}: choose --cuda from its builds")
    out.replace(wheel)
    return before - wheel.stat().st_size


def tar_tree(src: Path, dest: Path, files: list[str], arc_root: str, extra: dict[str, str] | None = None) -> None:
    with tarfile.open(dest, "w:gz") as tar:
        for f in sorted(files):
            p = src / f
            if p.is_file():
                tar.add(p, arcname=f"{arc_root}/{f}")
        for name, text in (extra or {}).items():
            data = text.encode()
            info = tarfile.TarInfo(f"{arc_root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build(out: Path, python_version: str, cuda: tuple[str, ...]) -> None:
    from cml.sdscripts.lookup import COMMIT_FILE, locate

    sd = locate()
    wheels = out / "wheels"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    wheels.mkdir(parents=True)
    pins = [f"{d}=={local_version(d)}" for d in PACKAGES]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *plat,
        "-d",
        str(wheels),
        *pins,
    ]
    print(f"bundle: downloading {len(pins)} wheels for Python {python_version} ...", flush=True)
    subprocess.run(cmd, check=True)
    bnb = next(wheels.glob("bitsandbytes-*.whl"))
    saved = prune_bitsandbytes(bnb, cuda)
    print(f"bundle: bitsandbytes keeps CUDA {', '.join(cuda)} only ({saved / 2**20:.0f} MiB smaller)")
    sd_files = subprocess.run(["git", "ls-files", "-z"], cwd=sd.path, capture_output=True, check=True).stdout.decode().split("\0")
    tar_tree(sd.path, out / "sd-scripts.tar.gz", [f for f in sd_files if f], "sd-scripts", {COMMIT_FILE: f"{sd.commit}\n"})
    own = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    tar_tree(ROOT, out / "project.tar.gz", [f for f in own if f and not f.startswith("sd-scripts")], "cml")
    manifest = {
        "python": python_version,
        "cuda_builds_of_bitsandbytes": list(cuda),
        "sd_scripts_commit": sd.commit,
        "wheels": sorted(p.name for p in wheels.glob("*.whl")),
        "pins": pins,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"bundle: {out} ({size / 2**20:.1f} MiB): {len(list(wheels.glob('*.whl')))} wheels, sd-scripts {str(sd.commit)[:10]}, the project")


def install(bundle: Path, site: Path) -> None:
    """Offline install into ``site`` (put it first on PYTHONPATH); unpack sd-scripts beside the wheels."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"bundle: no wheels in {bundle / 'wheels'}: run `make gpu-bundle` on a machine with network first")
    site.mkdir(parents=True, exist_ok=True)
    # Byte-compiled at install: machines that set PYTHONDONTWRITEBYTECODE would otherwise compile transformers,
    # diffusers and sd-scripts again in every trainer process (measured on an H100 machine: ~14 s per stage).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
        check=True,
    )
    dest = site.parent / "sd-scripts"
    if not (dest / "train_network.py").is_file():
        with tarfile.open(bundle / "sd-scripts.tar.gz") as tar:
            tar.extractall(site.parent, filter="data")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(dest), str(Path(__file__).resolve().parent)], check=False)
    print(f"bundle: installed {len(wheels)} wheels into {site}; sd-scripts at {dest}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the bundle (needs the package registry)")
    b.add_argument("--out", type=Path, default=DEFAULT_DIR)
    b.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    b.add_argument("--cuda", default="130,132", help="bitsandbytes CUDA builds to keep, matching the GPU machine's torch (default 130,132)")
    i = sub.add_parser("install", help="install a bundle offline")
    i.add_argument("--bundle", type=Path, default=DEFAULT_DIR)
    i.add_argument("--site", type=Path, default=Path("/tmp/cml-gpu/site"))  # noqa: S108  (the GPU machine's scratch site, as the Makefile's GPU_SITE)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        build(a.out, a.python_version, tuple(c.strip() for c in a.cuda.split(",") if c.strip()))
    else:
        install(a.bundle, a.site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
