"""Open and validate images, convert them to RGB, and the built-in transforms that make B from A."""

from __future__ import annotations

import hashlib
import io
import math
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from cml.errors import InputError
from cml.files import atomic_path

MIN_SIDE = 64  # sd-scripts' smallest bucket; smaller images cannot be trained on
MAX_SIDE = 8192  # larger images are refused: decoding them would take gigabytes
ACCEPTED = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
MAX_FILE_BYTES = 512 * 2**20  # an 8192 px square 16-bit RGBA TIFF, uncompressed, with room to spare


@dataclass
class LoadedImage:
    path: Path
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str  # of the file's bytes: provenance
    notes: list[str] = field(default_factory=list)
    orientation: int = 1  # the EXIF orientation tag (1 = none or upright)
    raw: Image.Image | None = None  # RGB as stored, before the orientation tag was applied (only when it had one to apply)


# EXIF orientation tag -> the transpose that shows the image upright (as PIL's ImageOps.exif_transpose does).
ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def oriented(img: Image.Image, tag: int) -> Image.Image:
    return img.transpose(ORIENT[tag]) if tag in ORIENT else img


def luminance_match(a: Image.Image, b: Image.Image, size: int = 64) -> float:
    """How well two images' luminance layouts agree: |correlation| at a small common size (an edit may invert)."""
    x = np.asarray(a.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    y = np.asarray(b.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    if x.std() < 1e-6 or y.std() < 1e-6:
        return 0.0
    return float(abs(np.corrcoef(x, y)[0, 1]))


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "F":  # 32-bit float: 0-1 (the usual scale of float TIFFs), else taken as 0-255
        a = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(a)
        if not finite.any():
            raise ValueError("every pixel is NaN or infinite: there is no image in it")
        if not finite.all():
            notes.append(f"{int((~finite).sum())} NaN or infinite pixel(s) set to black")
        top = 1.0 if np.nanmax(np.where(finite, a, np.nan)) <= 1.0 else 255.0
        notes.append(f"32-bit float (0-{top:g}) converted to 8-bit RGB")
        return Image.fromarray(np.clip(np.where(finite, a, 0.0) / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        notes.append(f"{mode} (16-bit) converted to 8-bit RGB")
        return img.convert("RGB")
    if mode == "P":  # a palette may carry transparency: judged as RGBA below
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] == 255:  # an alpha channel, but nothing transparent
            notes.append(f"{mode} converted to RGB (its alpha channel is fully opaque)")
            return img.convert("RGB")
        # Transparent pixels become white, as the kohya GUI's image tools do.
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img.convert("RGBA"), mask=alpha)
        notes.append(f"{mode} with transparency composited on white")
        return bg
    notes.append(f"{mode} converted to RGB")
    return img.convert("RGB")


def load_image(path: Path, role: str) -> LoadedImage:
    """Open, verify and convert one image. ``role`` names it in errors (e.g. "source[0]")."""
    where = f"{role} {path}"
    if not path.exists():
        raise InputError(
            "image not found",
            where,
            "check the path (a relative path in a preset file starts at its folder; one typed on the command line, or a shipped preset's, where cml runs)",
        )
    if path.is_dir():
        raise InputError("is a folder, not an image", where, "name an image file (PNG, JPEG, WebP)")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the read, a device like /dev/zero never end it
        raise InputError("is not a regular file (a device, pipe or socket)", where, "name an image file (PNG, JPEG, WebP)")
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(f"image file is {st.st_size / 2**20:.0f} MiB, over the limit of {MAX_FILE_BYTES // 2**20} MiB", where, "save it at a smaller size")
    data = path.read_bytes()
    if not data:
        raise InputError("image file is empty", where, "re-export the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            fmt, size = probe.format, probe.size
            probe.verify()
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise InputError("not an image PIL can read", where, "give a PNG, JPEG or WebP file") from None
        raise InputError(f"image is too large (limit {MAX_SIDE} px a side)", where, f"downscale it to at most {MAX_SIDE} px") from None
    except Exception as e:  # truncated or corrupt data fails verify() in many ways
        raise InputError(f"image is damaged or truncated ({type(e).__name__}: {e})", where, "re-export the image") from None
    if fmt not in ACCEPTED:
        raise InputError(f"image format {fmt} is not supported", where, "convert it to PNG")
    w, h = size
    if max(w, h) > MAX_SIDE:
        raise InputError(f"image is {w}x{h}, over the limit of {MAX_SIDE} px a side", where, f"downscale it to at most {MAX_SIDE} px")
    if min(w, h) < MIN_SIDE:
        raise InputError(f"image is {w}x{h}, too small to train on (at least {MIN_SIDE} px a side)", where, "use a larger image")
    notes: list[str] = []
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise InputError(f"image is damaged or truncated ({e})", where, "re-export the image") from None
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        kind = "page" if fmt == "TIFF" else "frame"
        notes.append(f"{frames} {kind}s: the first {kind} is used")
    tag = int(img.getexif().get(0x0112, 1) or 1)
    try:
        rgb = _to_rgb(img, notes)
    except ValueError as e:
        raise InputError(f"image cannot be used: {e}", where, "re-export the image") from None
    upright = oriented(rgb, tag)
    if tag in ORIENT:
        notes.append(f"EXIF orientation {tag} applied")
    return LoadedImage(path=path, image=upright, sha256=hashlib.sha256(data).hexdigest(), notes=notes, orientation=tag, raw=rgb if tag in ORIENT else None)


# ------------------------------------------------------------- transforms


def grayscale(img: Image.Image) -> Image.Image:
    return img.convert("L").convert("RGB")


def sepia(img: Image.Image) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
    return Image.fromarray(np.clip(a @ m.T, 0, 255).astype(np.uint8), "RGB")


def invert(img: Image.Image) -> Image.Image:
    return ImageOps.invert(img)


def blur(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(img.size) / 128)))


TRANSFORMS = {"grayscale": grayscale, "sepia": sepia, "invert": invert, "blur": blur}


def pixel_sha256(img: Image.Image) -> str:
    h = hashlib.sha256(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG only when its pixels changed, so re-planning keeps files (and mtimes) stable."""
    if path.exists():
        try:
            with Image.open(path) as old:
                if old.mode == img.mode and old.size == img.size and old.tobytes() == img.tobytes():
                    return
        except Exception:  # noqa: S110  (an unreadable old file is simply written again)
            pass
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def bucket(width: int, height: int, resolution: int, steps: int = 64) -> tuple[int, int] | None:
    """The bucket sd-scripts gives an image (BucketManager.select_bucket with bucket_no_upscale, cml's dataset
    settings), or None where sd-scripts would divide by zero or make an empty bucket. Mirrors the pinned commit's
    code step by step; tests/sdscripts/test_validators.py checks it against BucketManager itself."""

    def round_to_steps(x: float) -> int:
        x = int(x + 0.5)
        return x - x % steps

    aspect = width / height
    max_area = resolution * resolution
    if width * height > max_area:
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        bw_r = round_to_steps(rw)
        bh_in_wr = round_to_steps(bw_r / aspect)
        bh_r = round_to_steps(rh)
        if bh_in_wr == 0 or bh_r == 0:
            return None
        bw_in_hr = round_to_steps(bh_r * aspect)
        if abs(bw_r / bh_in_wr - aspect) < abs(bw_in_hr / bh_r - aspect):
            resized = (bw_r, int(bw_r / aspect + 0.5))
        else:
            resized = (int(bh_r * aspect + 0.5), bh_r)
    else:
        resized = (width, height)
    bw, bh = resized[0] - resized[0] % steps, resized[1] - resized[1] % steps
    return (bw, bh) if bw > 0 and bh > 0 else None
