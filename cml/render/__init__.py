"""Renders the kohya files of a run in cml's own process: which sd-scripts script runs each stage and its argv
(scripts.py), the dataset and training TOMLs (train_config.py), the kohya_ss GUI's config (gui.py), the run folder's
files (run_folder.py), and the trainer's option names, read once from its own parser (trainer_options.py)."""
