"""Fake sdxl_gen_img.py: the fake gen_img.py's drawing."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_img import main, setup_parser

if __name__ == "__main__":
    main(setup_parser().parse_args())
