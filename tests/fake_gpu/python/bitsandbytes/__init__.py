"""A stand-in for bitsandbytes that cannot load (the probe must then fall back from AdamW8bit)."""

import os

raise ImportError(os.environ.get("FAKE_BNB_ERROR", "fake bitsandbytes: no build for this CUDA"))
