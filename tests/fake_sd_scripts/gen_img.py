"""Fake gen_img.py: one image per prompt line, named as --sequential_file_name names them; colour fades with --am."""

import re
import sys
from pathlib import Path

from PIL import Image


def arg(name):
    return sys.argv[sys.argv.index(name) + 1]


size = int(arg("--W"))
out = Path(arg("--outdir"))
lines = [ln for ln in Path(arg("--from_file")).read_text().splitlines() if ln.strip()]
for i, line in enumerate(lines, 1):
    w = float(re.search(r"--am ([-\d.,]+)", line).group(1).split(",")[-1])  # the last network's weight
    seed = int(re.search(r"--d (\d+)", line).group(1))
    sat = max(0.0, min(1.0, 0.5 - 0.4 * w))  # a positive weight "desaturates", like a grayscale LoRA
    g = 120 + seed
    img = Image.new("RGB", (size, size), (int(g + 120 * sat), g, int(g - 100 * sat)))
    img.save(out / f"im_{i:06d}.png")
    print(f"fake gen_img: {line}", flush=True)
