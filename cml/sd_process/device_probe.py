"""The device probe, run in a child process with sd-scripts' Python (cml's own process never imports torch).

    python -m cml.sd_process.device_probe [bnb]

Prints one JSON object: torch's version and CUDA build, whether CUDA is usable (and why not), the GPU's name,
memory and compute capability; with ``bnb``, whether one real AdamW8bit step works on it.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any


def adamw8bit_step() -> dict[str, str]:
    """One real bitsandbytes AdamW8bit step on the GPU: {"bnb": version} or {"bnb_error": why}."""
    try:
        import bitsandbytes as bnb
        import torch

        w = torch.nn.Parameter(torch.randn(128, 128, device="cuda"))
        before = w.detach().clone()
        opt = bnb.optim.AdamW8bit([w], lr=1e-2)
        (w * w).sum().backward()
        opt.step()
        torch.cuda.synchronize()
        eight_bit = any(torch.is_tensor(v) and v.dtype == torch.uint8 for v in opt.state[w].values())
        if not eight_bit:
            raise RuntimeError("the step kept no 8-bit optimizer state")
        if not bool(torch.isfinite(w).all()) or torch.equal(w.detach(), before):
            raise RuntimeError("the step did not change the weights finitely")
        return {"bnb": getattr(bnb, "__version__", "?")}
    except Exception as e:
        return {"bnb_error": (f"{type(e).__name__}: {e}".strip().splitlines() or ["?"])[0][:300]}


def probe(check_bnb: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import torch
    except Exception as e:
        return {"error": f"torch does not import ({type(e).__name__}: {e})"}
    out["torch"] = torch.__version__
    out["torch_cuda"] = getattr(torch.version, "cuda", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok = bool(torch.cuda.is_available())
        except Exception as e:
            ok = False
            out["cuda_error"] = f"{type(e).__name__}: {e}"
    if not ok and caught and "cuda_error" not in out:
        out["cuda_error"] = str(caught[-1].message).strip().splitlines()[0]
    out["cuda"] = ok
    if ok:
        p = torch.cuda.get_device_properties(0)
        out.update(name=p.name, total_memory=int(p.total_memory), capability=list(torch.cuda.get_device_capability(0)))
        if check_bnb:
            out.update(adamw8bit_step())
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(probe(argv[:1] == ["bnb"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
