"""Which image is A and which is its B: lists in order, or pairs by file name (folders, suffixes).

- ``source = ["a.png", "b.png"]``: the A images, in this order; ``source = "A/"``: a folder's images, sorted by name
  (leaving out files that carry a target's suffix);
- a target's ``images = [...]``: one B per A, in the same order; ``images = "B/"``: the B of ``A/x.png`` is the
  image of ``B/`` named ``x`` (any image extension);
- a target's ``suffix = "_gray"``: the B of ``x.png`` is ``x_gray.png`` (any image extension) beside it.

Every problem (an A without its B, a B without its A, two files of one name) is collected, for load_inputs to
report at once with the images' own (a B of another size than its A), before anything is written.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from cml.preset.models import Preset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def images_in(folder: Path, problems: list[str] | None = None) -> list[Path]:
    """The image files of a folder (by extension), sorted; an entry named like an image that is no regular file (a
    broken link, a pipe, a folder) is named in ``problems`` instead of being passed over."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        if p.is_file():
            out.append(p)
        elif problems is not None:
            what = "a broken link" if p.is_symlink() and not p.exists() else "a folder" if p.is_dir() else "not a regular file"
            problems.append(f"{folder}: {p.name} is named like an image but is {what}: remove or rename it")
    return out


def stem(p: Path) -> str:
    """A file's name without extension, in Unicode's composed form: macOS writes names decomposed (NFD), other systems
    composed (NFC); the same name typed on either must pair."""
    return unicodedata.normalize("NFC", p.stem)


def is_b(p: Path, suffixes: list[str], stems: set[str]) -> bool:
    """A file beside the A images is a B when its name is an A's name plus a target's suffix ("stingray" is no B of
    suffix "ray" without a "sting" beside it)."""
    return any(stem(p).endswith(s) and stem(p)[: -len(s)] in stems for s in suffixes)


@dataclass
class Pairing:
    sources: list[Path]  # A, in order
    b: dict[str, list[Path | None]] = field(default_factory=dict)  # target -> its B per A (None: a transform makes it, or none found)
    problems: list[str] = field(default_factory=list)  # every mismatch, for load_inputs to report with the images' own


def _by_stem(paths: list[Path], where: str, problems: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        if stem(p) in out:
            problems.append(f"{where}: {out[stem(p)].name} and {p.name} have one name: keep one of them")
            continue
        out[stem(p)] = p
    return out


def pair(preset: Preset) -> Pairing:
    problems: list[str] = []
    suffixes = [t.suffix for t in preset.targets.values() if t.suffix]
    sources: list[Path] = []
    for i, entry in enumerate(preset.source):
        if entry.is_dir():
            every = images_in(entry, problems)
            stems = {stem(p) for p in every}
            found = [p for p in every if not is_b(p, suffixes, stems)]
            if not every:
                problems.append(f"source[{i}] {entry}: the folder holds no images (PNG, JPEG, WebP, BMP, TIFF, GIF)")
            sources += found
        else:
            sources.append(entry)
    a_by_stem = _by_stem(sources, "source", problems) if any(e.is_dir() for e in preset.source) else {}
    pairing = Pairing(sources)
    for name, t in preset.targets.items():
        where = f"targets.{name}"
        if t.transform:
            pairing.b[name] = [None] * len(sources)
            continue
        if t.suffix and not (len(preset.source) == 1 and preset.source[0].is_dir()):
            problems.append(f"{where}.suffix: B beside A needs source = a folder (x.png and x{t.suffix}.png in it)")
            pairing.b[name] = [None] * len(sources)
            continue
        if len(t.images) > 1 and any(p.is_dir() for p in t.images):
            problems.append(f"{where}.images: a folder of B images is given alone (B matched to A by file name)")
            pairing.b[name] = [None] * len(sources)
            continue
        if t.suffix:
            every = images_in(preset.source[0])
            stems = {stem(p) for p in every}
            b_by_stem = _by_stem([p for p in every if is_b(p, [t.suffix], stems)], f"{where}.suffix", problems)
            missing = [a for a in sources if stem(a) + t.suffix not in b_by_stem]
            orphans = [a for a in missing if stem(a).endswith(t.suffix)]
            for a in orphans:
                problems.append(
                    f"{where}.suffix {t.suffix!r}: {a.name} is named like a B, but its A ({stem(a)[: -len(t.suffix)]}.*) is not there: add it, or rename {a.name}"
                )
            rest = [a for a in missing if a not in orphans]
            if rest:
                names = ", ".join(f"{a.name} (no {stem(a)}{t.suffix}.*)" for a in rest)
                problems.append(f"{where}.suffix {t.suffix!r}: no B beside {names}")
            pairing.b[name] = [b_by_stem.get(stem(a) + t.suffix) for a in sources]
            continue
        if len(t.images) == 1 and t.images[0].is_dir():
            folder = t.images[0]
            if not a_by_stem:
                a_by_stem = _by_stem(sources, "source", problems)
            b_by_stem = _by_stem(images_in(folder, problems), f"{where}.images", problems)
            no_b = [a_by_stem[s].name for s in a_by_stem if s not in b_by_stem]
            no_a = [b_by_stem[s].name for s in b_by_stem if s not in a_by_stem]
            if no_b:
                problems.append(f"{where}.images {folder}: no B named like {', '.join(no_b)}")
            if no_a:
                problems.append(f"{where}.images {folder}: {', '.join(no_a)} match no A of the source (by file name)")
            pairing.b[name] = [b_by_stem.get(stem(s)) for s in sources]
            continue
        if len(t.images) != len(sources):
            problems.append(f"{where}.images has {len(t.images)} image(s) but the source has {len(sources)}: give one B per A, in the same order")
            pairing.b[name] = [None] * len(sources)
            continue
        pairing.b[name] = list(t.images)
    pairing.problems = problems
    return pairing
