"""sd-scripts' image generator as cml's check runs it: gen_img.py's own parser and ``main``, with SD1/SD2 models
loaded without their random initialisation (cml/sd_process/model_init.py): gen_img.py seeds each image's noise
itself, so every image is the one gen_img.py gives.

    python -m cml.sd_process.gen gen_img|sdxl_gen_img ARGS...

Runs in sd-scripts' folder with its Python (sd-scripts on the path), as gen_img.py does.
"""

from __future__ import annotations

import sys

from cml.sd_process import patches


def main(argv: list[str]) -> int:
    script, rest = argv[0], argv[1:]
    sys.argv = [f"{script}.py", *rest]
    module = __import__(script)
    patches.patch_model_load(exact=False)
    module.main(module.setup_parser().parse_args(rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
