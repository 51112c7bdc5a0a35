"""fake networks.lora: its existence, and the save hook's signature cml's direct method checks."""


class LoRANetwork:
    def save_weights(self, file, dtype, metadata):
        raise NotImplementedError
