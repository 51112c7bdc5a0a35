"""Fake sd-scripts `library.train_util`: what cml's trainer (cml/sd_process/train.py) calls around the trainer."""


def verify_command_line_training_args(args):
    return None


def read_config_from_file(args, parser):
    args.network_train_unet_only, args.weighted_captions = True, False
    return args


def calculate_sha256(filename):
    import hashlib

    with open(filename, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
