"""Everything that speaks kohya: the files its tools read and the network module cml hands them."""

# The LoRA module cml trains with: sd-scripts' networks.lora, exactly faster and fixed for --base_weights
# (cml/kohya/lora.py). Here, where both cml's process and the trainer's can read it without importing more.
CML_NETWORK_MODULE = "cml.kohya.lora"
