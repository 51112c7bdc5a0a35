"""Prints the option names of an sd-scripts script, read from its own argument parser (run in sd-scripts' Python).

python -m cml.sd_process.parser_options train_network
"""

from __future__ import annotations

import importlib
import json
import sys


def option_names(script: str) -> list[str]:
    parser = importlib.import_module(script).setup_parser()
    return sorted({a.dest for a in parser._actions})


def main(argv: list[str]) -> int:
    print(json.dumps(option_names(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
