"""Fake sd-scripts train_network.py: run as a script (as sd-scripts' own), or imported by cml's trainer (cml/sd_process/train.py)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "."))
from fake_trainer import main, setup_parser  # noqa: F401  (cml's trainer calls setup_parser)


class NetworkTrainer:
    """The hooks cml's trainer overrides, with sd-scripts' signatures (cml/sd_process/patches.py checks them)."""

    def get_noise_pred_and_target(
        self, args, accelerator, noise_scheduler, latents, batch, text_encoder_conds, unet, network, weight_dtype, train_unet, is_train=True
    ):
        raise NotImplementedError

    def cache_text_encoder_outputs_if_needed(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
        raise NotImplementedError

    def update_metadata(self, metadata, args):
        pass

    def on_step_start(self, args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train: bool = True):
        pass

    def post_process_network(self, args, accelerator, network, text_encoders, unet):
        pass

    def train(self, args):
        sys.exit(main("train_network.py", via="cml.sd_process.train"))


if __name__ == "__main__":
    sys.exit(main("train_network.py"))
