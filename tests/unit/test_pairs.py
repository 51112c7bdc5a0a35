"""Pairs by file name: a source folder, a folder of B images, a suffix; every mismatch named at once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cml.errors import ConfigErrors, InputError
from cml.inputs import load_inputs
from cml.preset import load_preset


def img(path, size=(96, 96), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0] = value
    a[: size[1] // 2, :, 1] = 255 - value  # some layout, so that B's orientation is readable
    Image.fromarray(a).save(path)
    return path


def test_a_source_folder_is_its_images_sorted_by_name_and_b_by_suffix_beside_them(write_preset, tmp_path):
    src = tmp_path / "pairs"
    for n, v in (("b", 40), ("a", 80), ("c", 120)):
        img(src / f"{n}.png", value=v)
        img(src / f"{n}_gray.png", value=v + 1)
    (src / "notes.txt").write_text("not an image")
    p = write_preset(source=str(src), targets={"gray": {"suffix": "_gray"}})
    inputs = load_inputs(load_preset(p)[0])
    assert [s.path.name for s in inputs.source] == ["a.png", "b.png", "c.png"]  # suffixed files are not sources
    b = inputs.targets["gray"].images
    assert [int(np.asarray(x)[0, 0, 0]) for x in b] == [81, 41, 121]  # each A's own B


def test_a_folder_of_b_images_is_matched_by_name_whatever_the_extension(write_preset, tmp_path):
    src, bs = tmp_path / "A", tmp_path / "B"
    for n, v in (("x", 10), ("y", 20)):
        img(src / f"{n}.png", value=v)
    img(bs / "y.jpg", value=200)
    img(bs / "x.webp", value=100)
    p = write_preset(source=str(src), targets={"edit": {"images": str(bs)}})
    inputs = load_inputs(load_preset(p)[0])
    assert [s.path.name for s in inputs.source] == ["x.png", "y.png"]
    got = [int(np.asarray(x)[-1, -1, 0]) for x in inputs.targets["edit"].images]
    assert abs(got[0] - 100) <= 3 and abs(got[1] - 200) <= 3  # the JPEG rounds


def test_every_mismatch_is_named_at_once_before_anything_is_written(write_preset, tmp_path):
    src, bs = tmp_path / "A", tmp_path / "B"
    for n in ("x", "y", "z"):
        img(src / f"{n}.png")
    img(src / "x.jpg")  # two A files of one name
    img(bs / "x.png")
    img(bs / "w.png")  # a B without its A
    img(src / "y_gray.png")
    img(src / "z_gray.png", size=(80, 96))  # a B of another size
    p = write_preset(source=str(src), targets={"edit": {"images": str(bs)}, "gray": {"suffix": "_gray"}})
    with pytest.raises(ConfigErrors) as e:
        load_inputs(load_preset(p)[0])
    text = "\n".join(e.value.lines)
    assert "source: x.jpg and x.png have one name" in text or "source: x.png and x.jpg have one name" in text
    assert "targets.edit.images" in text and "no B named like y.png, z.png" in text
    assert "w.png match no A of the source" in text
    assert "targets.gray.suffix '_gray': no B beside x.jpg (no x_gray.*), x.png (no x_gray.*)" in text
    assert "B is 80x96 but its A (z.png) is 96x96" in text  # the images' own problems, in the same report
    assert not (tmp_path / "runs").exists()


def test_a_b_of_another_size_is_named_with_its_pair(write_preset, tmp_path):
    src, bs = tmp_path / "A", tmp_path / "B"
    img(src / "x.png")
    img(bs / "x.png", size=(80, 96))
    with pytest.raises(InputError, match=r"B is 80x96 but its A \(x.png\) is 96x96"):
        load_inputs(load_preset(write_preset(source=str(src), targets={"edit": {"images": str(bs)}}))[0])


@pytest.mark.parametrize(
    "targets, message",
    [
        ({"t": {"suffix": "_b", "transform": "grayscale"}}, "give one of 'images'"),
        ({"t": {"suffix": "x/y"}}, "is not a file-name suffix"),
        ({"t": {"transform": "grayscale", "method": "direct", "symmetric": True}}, "the direct method trains both ways already"),
    ],
)
def test_target_settings_that_cannot_pair_are_refused(write_preset, targets, message):
    with pytest.raises(ConfigErrors, match=message):
        load_preset(write_preset(targets=targets))


def test_a_suffix_needs_a_source_folder(write_preset):
    with pytest.raises(InputError, match="B beside A needs source = a folder"):
        load_inputs(load_preset(write_preset(targets={"t": {"suffix": "_b"}}))[0])


def test_an_empty_source_folder_is_named(write_preset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="the folder holds no images"):
        load_inputs(load_preset(write_preset(source=str(tmp_path / "empty")))[0])


def refusal(write_preset, **top) -> str:
    with pytest.raises(InputError) as e:
        load_inputs(load_preset(write_preset(**top))[0])
    return e.value.line()


def test_a_b_without_its_a_is_named(write_preset, tmp_path):
    src = tmp_path / "pairs"
    for n in ("x.png", "x_gray.png", "y_gray.png"):
        img(src / n)
    line = refusal(write_preset, source=str(src), targets={"gray": {"suffix": "_gray"}})
    assert "y_gray.png is named like a B, but its A (y.*) is not there" in line


def test_a_suffix_does_not_swallow_an_a_that_only_ends_like_it(write_preset, tmp_path):
    """suffix "ray": stingray.png is an A (there is no sting.png), and its B is stingrayray.png."""
    src = tmp_path / "fish"
    for n in ("stingray.png", "stingrayray.png", "cod.png", "codray.png"):
        img(src / n)
    inputs = load_inputs(load_preset(write_preset(source=str(src), targets={"r": {"suffix": "ray"}}))[0])
    assert [s.path.name for s in inputs.source] == ["cod.png", "stingray.png"]


def test_names_pair_whichever_unicode_form_they_are_written_in(write_preset, tmp_path):
    import unicodedata

    src, bs = tmp_path / "A", tmp_path / "B"
    img(src / (unicodedata.normalize("NFC", "café") + ".png"))
    img(bs / (unicodedata.normalize("NFD", "café") + ".png"))
    inputs = load_inputs(load_preset(write_preset(source=str(src), targets={"e": {"images": str(bs)}}))[0])
    assert len(inputs.targets["e"].images) == 1


def test_entries_named_like_images_that_are_not_files_are_named(write_preset, tmp_path):
    import os

    src = tmp_path / "pairs"
    img(src / "x.png")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(src / "pipe.png")
    line = refusal(write_preset, source=str(src), targets={"g": {"transform": "grayscale"}})
    assert "gone.png is named like an image but is a broken link" in line and "pipe.png is named like an image but is not a regular file" in line
