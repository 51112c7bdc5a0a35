"""Runs inside sd-scripts' Python, never in cml's process: started as `python -m cml.sd_process.<module>` with
sd-scripts' folder as the working directory. Imports only the standard library, sd-scripts (and what it brings:
torch, diffusers, transformers, ...) and this package (tests/unit/test_boundary.py enforces it both ways)."""

# The LoRA module cml trains with (lora.py): sd-scripts' networks.lora, exactly faster and fixed for --base_weights.
CML_NETWORK_MODULE = "cml.sd_process.lora"
