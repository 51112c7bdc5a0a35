"""safetensors files read and written in place, without torch: the header, the tensors' raw bytes through a memory
map, finiteness tests on the raw bits (checkpoints are gigabytes; nothing is copied or converted), and the one
header writer (``copy_with_header``): a file's tensor bytes kept as they are under another header (metadata added,
shapes changed, tensors appended).

cml's own process never imports torch: bf16 is read by widening its bits to float32 (``as_float32``).
"""

from __future__ import annotations

import json
import mmap
import shutil
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from cml.files import atomic_path

NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}  # BF16 is widened by as_float32 itself
# Exponent bits all set = Inf or NaN; tested on the integer bits (float16 arithmetic is slow in numpy).
EXPONENT = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80), "F32": (np.uint32, 0x7F800000), "F64": (np.uint64, 0x7FF0000000000000)}
MAX_HEADER = 100 * 2**20  # safetensors' own limit: a larger length is a damaged file, not a header to read


def header_of(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header, metadata included, and where its data starts (8-byte length + header).
    A file that is not one raises ValueError."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_HEADER:
            raise ValueError(f"header length {n} is not plausible")
        text = f.read(n)
    if len(text) != n:
        raise ValueError("truncated header")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def layout(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table and where its data starts."""
    header, start = header_of(path)
    header.pop("__metadata__", None)
    return header, start


def read_metadata(path: Path) -> dict[str, str]:
    """The file's ``__metadata__`` (sd-scripts' ss_*, modelspec.*, cml's cml_*)."""
    meta = header_of(path)[0].get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


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


def tensors_f32(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a (small) file as float32 arrays in their shapes: LoRAs, never checkpoints."""
    header, base = layout(path)
    out = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for name, info in header.items():
            if info.get("dtype") not in (*NP_DTYPES, "BF16"):
                raise ValueError(f"{name}: dtype {info.get('dtype')} is not a float")
            out[name] = as_float32(raw(mm, info, base), info["dtype"]).reshape(info["shape"])
    return out


def nonfinite_tensors(path: Path, prefix: str = "") -> list[str]:
    """Names of the tensors (under ``prefix``) that hold NaN or Inf."""
    header, base = layout(path)
    bad = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for k in sorted(header):
            if k.startswith(prefix) and not all_finite(raw(mm, header[k], base), header[k]["dtype"]):
                bad.append(k)
    return bad


def file_and_content_sha256(path: Path) -> tuple[str, str]:
    """(sha256 of the file's bytes, sha256 of its tensors: their table and bytes, metadata left out), in one read. The
    content is what a later stage reads of the file: a copy machine model made again differs in its metadata
    (modelspec.date) but not in it."""
    import hashlib

    table, start = layout(path)
    whole, content = hashlib.sha256(), hashlib.sha256()
    content.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    with open(path, "rb") as f:
        whole.update(f.read(start))
        while chunk := f.read(1 << 24):
            whole.update(chunk)
            content.update(chunk)
    return whole.hexdigest(), content.hexdigest()


def addnet_hashes(path: Path, metadata: dict[str, str]) -> tuple[str, str] | None:
    """``sshs_model_hash`` and ``sshs_legacy_hash`` of a LoRA with ``metadata``, as sd-scripts computes them
    (train_util.precalculate_safetensors_hashes: the file serialised with its ss_* metadata only; A1111, Forge and
    sd-webui-additional-networks show and record them). None for tensors numpy cannot hold (bf16)."""
    import hashlib

    from safetensors.numpy import load_file, save

    try:
        tensors = load_file(str(path))
    except (TypeError, ValueError):
        return None
    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = struct.unpack("<Q", data[:8])[0]
    return hashlib.sha256(data[8 + n :]).hexdigest(), hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


def copy_with_header(src: Path, dst: Path, header: dict, appended: Iterable[bytes] = ()) -> None:
    """``src``'s tensor bytes, as they are, under ``header`` (its data offsets index those bytes, then ``appended``),
    written to ``dst`` atomically. The one place a safetensors header is written."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    _, start = header_of(src)
    with open(src, "rb") as f, atomic_path(dst) as tmp, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        f.seek(start)
        shutil.copyfileobj(f, out, 1 << 24)
        for blob in appended:
            out.write(blob)


def add_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """``src`` copied to ``dst`` with ``extra`` added to its metadata (the ss_* keys kept, tensor bytes unchanged)."""
    header, _ = header_of(src)
    header["__metadata__"] = {**(header.get("__metadata__") or {}), **{k: str(v) for k, v in extra.items()}}
    copy_with_header(src, dst, header)


def write_reshaped(src: Path, dst: Path, reshape: Callable[[str, list[int]], list[int] | None]) -> list[str]:
    """``src`` copied to ``dst`` with some tensors' shapes changed in the header only: ``reshape(name, shape)`` gives
    the new shape (same number of elements) or None to keep it. Bytes and metadata are kept as they are, so the
    copy holds exactly the same numbers in any dtype. Returns the reshaped tensors' names."""
    header, _ = header_of(src)
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
    copy_with_header(src, dst, header)
    return changed


def missing_tensors(src: Path, dst: Path, names: tuple[str, ...]) -> list[str]:
    """Of ``names``, those ``src`` holds and ``dst`` lacks."""
    have, lack = layout(src)[0], layout(dst)[0]
    return [k for k in names if k in have and k not in lack]


def append_tensors(src: Path, into: Path, dst: Path, names: list[str]) -> None:
    """``into`` written to ``dst`` with the tensors ``names`` of ``src`` appended (their bytes as they are): a
    checkpoint of gigabytes is never loaded."""
    hs, start = layout(src)
    header, _ = header_of(into)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    blobs = []
    with open(src, "rb") as f:
        for k in names:
            s, e = hs[k]["data_offsets"]
            f.seek(start + s)
            blobs.append(f.read(e - s))
            header[k] = {"dtype": hs[k]["dtype"], "shape": hs[k]["shape"], "data_offsets": [end, end + (e - s)]}
            end += e - s
    copy_with_header(into, dst, header, blobs)
