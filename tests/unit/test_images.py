"""cml/images.py in-process."""

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
    assert "EXIF orientation 6 applied" in got.notes


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


def exif_jpeg(path, tag: int, size=(160, 96)):
    """A JPEG whose pixels are stored sideways, with an EXIF orientation tag that turns them upright."""
    from tests.conftest import colourful

    img = colourful(size)
    exif = Image.Exif()
    exif[0x0112] = tag
    img.save(path, exif=exif, quality=95)
    return path


def plan_notes(write_preset, tmp_path, **top):
    from tests.conftest import run_cml

    top.setdefault("train", {"steps": 3, "resolution": 128})  # non-square images need more than 64 px to bucket
    return run_cml("plan", str(write_preset(**top)))


def test_b_saved_without_as_tag_is_turned_like_a(write_preset, tmp_path):
    a = exif_jpeg(tmp_path / "a.jpg", 6)
    b = tmp_path / "b.png"
    Image.open(a).convert("L").save(b)  # PIL keeps A's stored pixels and drops the tag: B is sideways
    r = plan_notes(write_preset, tmp_path, source=str(a), targets={"g": {"images": [str(b)]}})
    assert r.returncode == 0, r.stderr
    assert "b.png: EXIF orientation differs from A's (1 vs 6); read with A's orientation tag (6), which matches A" in r.stderr
    staged = Image.open(tmp_path / "runs" / "t" / "diff-g" / "images" / "000.png")
    a_up = Image.open(tmp_path / "runs" / "t" / "copy" / "images" / "000.png")
    assert staged.size == a_up.size == (96, 160)


def test_b_saved_upright_without_a_tag_is_kept_as_it_is(write_preset, tmp_path):
    from PIL import ImageOps

    a = exif_jpeg(tmp_path / "a.jpg", 6)
    b = tmp_path / "b.png"
    ImageOps.exif_transpose(Image.open(a)).convert("L").save(b)  # an editor that applied the tag
    r = plan_notes(write_preset, tmp_path, source=str(a), targets={"g": {"images": [str(b)]}})
    assert r.returncode == 0, r.stderr
    assert "read with its own orientation tag (1), which matches A" in r.stderr


def test_b_matching_neither_reading_is_refused(write_preset, tmp_path):
    a = exif_jpeg(tmp_path / "a.jpg", 6)
    b = tmp_path / "b.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160), dtype=np.uint8)).save(b)
    r = plan_notes(write_preset, tmp_path, source=str(a), targets={"g": {"images": [str(b)]}})
    assert r.returncode == 2 and "neither reading of B matches A" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_input_notes_are_accurate(write_preset, tmp_path):
    from tests.conftest import colourful

    gif = tmp_path / "anim.gif"
    frames = [colourful((96, 96)), colourful((96, 96)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert "2 frames: the first frame is used" in load_image(gif, "source[0]").notes
    opaque = tmp_path / "opaque.png"
    colourful((96, 96)).convert("RGBA").save(opaque)
    notes = load_image(opaque, "source[0]").notes
    assert not any("transparency" in n for n in notes) and any("fully opaque" in n for n in notes)
    tif = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96), "F").save(tif)
    got = load_image(tif, "source[0]")
    assert 100 < np.asarray(got.image).mean() < 155  # a 0-1 float image is not black
    a = tmp_path / "a.png"
    colourful().save(a)
    r = plan_notes(write_preset, tmp_path, source=[str(a), str(a)], targets={"same": {"images": [str(a), str(a)]}})
    assert r.returncode == 0, r.stderr
    assert "source[1] a.png is the same image as source[0]: listed twice" in r.stderr
    assert "targets.same.images[0] a.png is identical to its A" in r.stderr


def test_every_bad_image_is_named_at_once(write_preset, tmp_path):
    bad1, bad2 = tmp_path / "cut.png", tmp_path / "nope.png"
    bad1.write_bytes(b"\\x89PNG\\r\\n")
    r = plan_notes(write_preset, tmp_path, source=[str(bad1), str(tmp_path / "a.png")], targets={"g": {"images": [str(bad2), str(bad2)]}})
    assert r.returncode == 2
    assert "source[0]" in r.stderr and "targets.g.images[0]" in r.stderr and "targets.g.images[1]" in r.stderr
    assert "Traceback" not in r.stderr
