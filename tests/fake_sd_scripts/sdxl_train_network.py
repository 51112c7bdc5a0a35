"""Fake sd-scripts sdxl_train_network.py: run as a script (as sd-scripts' own), or imported by cml's trainer (cml/sd_process/train.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "."))
from fake_trainer import main, setup_parser  # noqa: F401  (cml's trainer calls setup_parser)
from train_network import NetworkTrainer


class SdxlNetworkTrainer(NetworkTrainer):
    def train(self, args):
        sys.exit(main("sdxl_train_network.py", via="cml.sd_process.train"))


if __name__ == "__main__":
    sys.exit(main("sdxl_train_network.py"))
