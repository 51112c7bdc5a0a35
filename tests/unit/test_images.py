import io

import numpy as np
import pytest
from PIL import Image

from cml.errors import InputError
from cml.images import MAX_SIDE, TRANSFORMS, load_image, save_png
from tests.conftest import colourful


def saturation(img: Image.Image) -> float:
    return float(np.asarray(img.convert("HSV"))[..., 1].mean())


@pytest.mark.parametrize(
    "mode, fmt",
    [("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("L", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP")],
)
def test_modes_are_accepted_and_converted_to_rgb(tmp_path, mode, fmt):
    src = colourful()
    if mode == "I;16":
        img = Image.fromarray(np.asarray(src.convert("L"), dtype=np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = src.convert(mode)
    p = tmp_path / f"x.{fmt.lower()}"
    img.save(p, format=fmt)
    got = load_image(p, "source[0]")
    assert got.image.mode == "RGB" and got.image.size == src.size
    if mode != "RGB":
        assert got.notes, "a conversion must be noted"
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped to white
        assert 40 < np.asarray(got.image).mean() < 220


def test_exif_rotation_is_applied(tmp_path):
    img = colourful((128, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif.tobytes())
    got = load_image(p, "source[0]")
    assert got.image.size == (64, 128)
    assert "EXIF orientation applied" in got.notes


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "image not found"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "image file is empty"),
        (lambda p: p.write_text("hello, not an image"), "not an image"),
        (lambda p: p.write_bytes(_png_bytes(colourful((256, 256)))[:300]), "damaged or truncated"),
        (lambda p: p.write_bytes(_jpeg_bytes(colourful((256, 256)))[:500]), "damaged or truncated"),
        (lambda p: colourful((32, 200)).save(p, format="PNG"), "too small to train on"),
    ],
)
def test_bad_images_give_one_clear_error(tmp_path, make, message):
    p = tmp_path / "img.png"
    make(p)
    with pytest.raises(InputError, match=message) as e:
        load_image(p, "targets.g.images[0]")
    assert "targets.g.images[0]" in e.value.line()


def test_very_large_images_are_refused_with_the_limit(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (MAX_SIDE + 8, 64)).save(p)
    with pytest.raises(InputError, match=f"limit of {MAX_SIDE} px"):
        load_image(p, "source[0]")


def _png_bytes(img):
    b = io.BytesIO()
    img.save(b, format="PNG")
    return b.getvalue()


def _jpeg_bytes(img):
    b = io.BytesIO()
    img.save(b, format="JPEG")
    return b.getvalue()


def test_transforms_change_what_they_say():
    a = colourful()
    assert saturation(TRANSFORMS["grayscale"](a)) == 0 < saturation(a)
    inv = np.asarray(TRANSFORMS["invert"](a)).astype(int)
    assert (inv + np.asarray(a).astype(int) == 255).all()
    sep = np.asarray(TRANSFORMS["sepia"](a)).astype(float)
    assert (sep[..., 0] >= sep[..., 2]).mean() > 0.95  # warm: red over blue
    blurred = np.asarray(TRANSFORMS["blur"](a)).astype(float)
    assert np.abs(np.diff(blurred, axis=1)).mean() <= np.abs(np.diff(np.asarray(a).astype(float), axis=1)).mean()
    for fn in TRANSFORMS.values():
        assert fn(a).size == a.size and fn(a).mode == "RGB"


def test_save_png_keeps_unchanged_files(tmp_path):
    p = tmp_path / "x.png"
    save_png(colourful(), p)
    m = p.stat().st_mtime_ns
    save_png(colourful(), p)
    assert p.stat().st_mtime_ns == m
    save_png(TRANSFORMS["invert"](colourful()), p)
    assert p.stat().st_mtime_ns != m
