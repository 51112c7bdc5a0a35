"""Fake sd-scripts sdxl_train_network.py: run as a script (as sd-scripts' own), or imported by cml's trainer (cml/sd_process/train.py)."""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "."))
from fake_trainer import main

# The options the tests' presets use (cml checks train.extra against the trainer's own parser).
OPTIONS = ("config_file", "sample_prompts", "save_every_n_steps", "cache_latents_to_disk", "noise_offset", "max_grad_norm")


def setup_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for name in OPTIONS:
        p.add_argument(f"--{name}")
    return p


from train_network import NetworkTrainer  # noqa: E402  (after the path is set, as sd-scripts' own import)


class SdxlNetworkTrainer(NetworkTrainer):
    def train(self, args):
        sys.exit(main("sdxl_train_network.py", via="cml.sd_process.train"))


if __name__ == "__main__":
    sys.exit(main("sdxl_train_network.py"))
