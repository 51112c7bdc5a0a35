"""A stand-in for torch in the device probe's child process (tests/unit/test_device.py).

FAKE_CUDA (JSON): {"name": ..., "capability": [7, 5], "total_memory": bytes} for a usable GPU, or
{"error": "..."} for a GPU torch cannot use (the warning torch gives, e.g. a driver too old), or {} for none.
"""

import json
import os
import types
import warnings

__version__ = "9.9.9+fake"
version = types.SimpleNamespace(cuda=os.environ.get("FAKE_TORCH_CUDA", "12.4") or None)
_cfg = json.loads(os.environ.get("FAKE_CUDA", "{}"))


def _available() -> bool:
    if "error" in _cfg:
        warnings.warn(_cfg["error"], UserWarning, stacklevel=2)
        return False
    return "name" in _cfg


cuda = types.SimpleNamespace(
    is_available=_available,
    get_device_properties=lambda i: types.SimpleNamespace(name=_cfg["name"], total_memory=_cfg.get("total_memory", 8 * 2**30)),
    get_device_capability=lambda i: tuple(_cfg["capability"]),
)
