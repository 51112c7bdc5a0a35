# fake networks.lora: only its existence is checked
