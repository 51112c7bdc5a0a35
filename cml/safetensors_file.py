"""Reading safetensors files in place, without torch: the tensor table, raw bytes through a memory map, and
finiteness tests on the raw bits (checkpoints are gigabytes; nothing is copied or converted); and a copy of a file
with some shapes changed in its header only."""

from __future__ import annotations

import json
import mmap
import shutil
import struct
from pathlib import Path

import numpy as np

from cml.files import atomic_path

NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}  # BF16 is widened by as_float32 itself
# Exponent bits all set = Inf or NaN; tested on the integer bits (float16 arithmetic is slow in numpy).
EXPONENT = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80), "F32": (np.uint32, 0x7F800000), "F64": (np.uint64, 0x7FF0000000000000)}


def header_of(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header, metadata included, and where its data starts (8-byte length + header)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def layout(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table and where its data starts."""
    header, start = header_of(path)
    header.pop("__metadata__", None)
    return header, start


def raw(mm: mmap.mmap, info: dict, base: int) -> np.ndarray:
    """A tensor's bytes, viewed in place."""
    s, e = info["data_offsets"]
    return np.frombuffer(mm, np.uint8, e - s, base + s)


def all_finite(data: np.ndarray, dtype: str) -> bool:
    if dtype not in EXPONENT:
        return True
    t, mask = EXPONENT[dtype]
    return not np.any((data.view(t) & t(mask)) == t(mask))


def as_float32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return data.view(NP_DTYPES.get(dtype, np.uint8)).astype(np.float32)


def nonfinite_tensors(path: Path, prefix: str = "") -> list[str]:
    """Names of the tensors (under ``prefix``) that hold NaN or Inf."""
    header, base = layout(path)
    bad = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for k in sorted(header):
            if k.startswith(prefix) and not all_finite(raw(mm, header[k], base), header[k]["dtype"]):
                bad.append(k)
    return bad


def write_reshaped(src: Path, dst: Path, reshape) -> list[str]:
    """``src`` copied to ``dst`` with some tensors' shapes changed in the header only: ``reshape(name, shape)`` gives
    the new shape (same number of elements) or None to keep it. Bytes and metadata are kept as they are, so the
    copy holds exactly the same numbers in any dtype. Returns the reshaped tensors' names."""
    header, start = header_of(src)
    changed = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        new = reshape(name, info["shape"])
        if new is not None and list(new) != info["shape"]:
            if int(np.prod(new)) != int(np.prod(info["shape"])):
                raise ValueError(f"{name}: cannot reshape {info['shape']} to {list(new)}")
            info["shape"] = list(new)
            changed.append(name)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with open(src, "rb") as f, atomic_path(dst) as tmp, open(tmp, "wb") as out:
        f.seek(start)
        out.write(struct.pack("<Q", len(text)) + text)
        shutil.copyfileobj(f, out, 1 << 24)
    return changed
