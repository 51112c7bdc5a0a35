"""Fake gen_img.py: one image per prompt line, named as --sequential_file_name names them; colour fades with the
weights (--am) of the diff LoRAs loaded (every network but the copy LoRA, copy.safetensors)."""

import re
import sys
from pathlib import Path

from PIL import Image


def arg(argv, name):
    return argv[argv.index(name) + 1]


class Parser:
    """gen_img.py's setup_parser() stands in: the fake reads its argv as it is."""

    def parse_args(self, argv=None):
        return list(sys.argv[1:] if argv is None else argv)


def setup_parser():
    return Parser()


def lock_probe(out: Path) -> None:
    """FAKE_LOCK_PROBE: write whether the run folder's lock is held (by another process) while the generator runs."""
    import fcntl
    import os

    probe = os.environ.get("FAKE_LOCK_PROBE")
    if not probe:
        return
    with open(out.parents[2] / ".cml.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
            fcntl.flock(f, fcntl.LOCK_UN)
        except BlockingIOError:
            held = True
    with open(probe, "a") as f:
        f.write(f"{held}\n")


def main(argv):
    size = int(arg(argv, "--W"))
    out = Path(arg(argv, "--outdir"))
    lock_probe(out)
    lines = [ln for ln in Path(arg(argv, "--from_file")).read_text().splitlines() if ln.strip()]
    nets = []
    if "--network_weights" in argv:
        i = argv.index("--network_weights") + 1
        while i < len(argv) and not argv[i].startswith("--"):
            nets.append(Path(argv[i]).stem)
            i += 1
    for i, line in enumerate(lines, 1):
        muls = [float(m) for m in re.search(r"--am ([-\d.,]+)", line).group(1).split(",")]
        w = sum(m for name, m in zip(nets, muls) if name != "copy")
        seed = int(re.search(r"--d (\d+)", line).group(1))
        sat = max(0.0, min(1.0, 0.5 - 0.4 * w))  # a positive weight "desaturates", like a grayscale LoRA
        g = 120 + seed
        img = Image.new("RGB", (size, size), (int(g + 120 * sat), g, int(g - 100 * sat)))
        img.save(out / f"im_{i:06d}.png")
        print(f"fake gen_img: {line}", flush=True)


if __name__ == "__main__":
    main(setup_parser().parse_args())
