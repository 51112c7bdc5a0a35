"""A stand-in for sd-scripts' entry scripts, for orchestration tests: same argv, same outputs, scripted faults.

FAKE_MODE (environment): ok | fail | importerror | nofile | nan | zero | hang | stubborn | kill_at:<stage-name> | nanloss | infloss
| nanloss1 | nospace
(stubborn: ignores SIGTERM/SIGINT, then hangs, like a trainer that does not stop when asked)
(nanloss/infloss: the loss turns NaN / -inf at step 3 of 200, 20 ms a step, as a diverging run prints it; nanloss1: at step 1)
(nospace: the trainer fails as a full disk makes it fail)
FAKE_CALLS: a file each call appends its script name and output to (to see what ran).
FAKE_MERGE_SALT: changes the bytes merge_lora.py writes (a merge that is not deterministic).
train.toml's sample_prompts and save_every_n_steps make the files sd-scripts would write beside the output.
"""

import os
import signal
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

MODULES = ["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "lora_unet_mid_block_attentions_0_proj_in"]


def lora(dim: int, alpha: float, value: float) -> dict:
    sd = {}
    for m in MODULES:
        sd[f"{m}.lora_down.weight"] = np.full((dim, 8), 0.01, dtype=np.float16)
        sd[f"{m}.lora_up.weight"] = np.full((8, dim), value, dtype=np.float16)
        sd[f"{m}.alpha"] = np.array(alpha, dtype=np.float16)
    return sd


# The options the tests' presets use (cml checks train.extra against the trainer's own parser).
OPTIONS = ("config_file", "sample_prompts", "save_every_n_steps", "cache_latents_to_disk", "noise_offset", "max_grad_norm")


def setup_parser():
    import argparse

    p = argparse.ArgumentParser()
    for name in OPTIONS:
        p.add_argument(f"--{name}")
    return p


def arg(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def main(script: str, via: str = "") -> int:
    """``via``: the module that ran this trainer (cml.sd_process.train), written to FAKE_CALLS."""
    mode = os.environ.get("FAKE_MODE", "ok")
    if script.endswith("train_network.py"):
        cfg = tomllib.loads(Path(arg("--config_file")).read_text())
        out = Path(cfg["output_dir"]) / f"{cfg['output_name']}.safetensors"
        steps = cfg["max_train_steps"]
        if mode in ("nanloss", "infloss", "nanloss1"):
            steps = 200
    else:
        out = Path(arg("--save_to"))
        steps = 3
    stage = out.parent.parent.name
    calls = os.environ.get("FAKE_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(f"{script} {stage} {os.getpid()} {via or '-'}\n")
    if mode == "stubborn":  # before anything is printed: a test that sees output knows the handlers are in place
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"fake {script}: loading model", flush=True)
    if mode == "importerror":
        print("Traceback (most recent call last):\nModuleNotFoundError: No module named 'diffusers'", flush=True)
        return 1
    for i in range(1, steps + 1):
        loss = f"0.{9 - min(i, 8)}"
        if mode in ("nanloss", "infloss", "nanloss1") and script.endswith("train_network.py"):
            first_bad = 1 if mode == "nanloss1" else 3
            loss = loss if i < first_bad else ("-inf" if mode == "infloss" else "nan")
            time.sleep(0.02)
        sys.stderr.write(f"\rsteps: {100 * i // steps}%|###| {i}/{steps} [00:01<00:00,  1.0it/s, avr_loss={loss}]")
        sys.stderr.flush()
        if mode == f"kill_at:{stage}":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            time.sleep(60)
        if mode == "stubborn":
            time.sleep(120)
    sys.stderr.write("\n")
    if mode == "fail":
        print("Traceback (most recent call last):\nRuntimeError: CUDA out of memory (fake)", flush=True)
        return 1
    if mode == "nofile":
        return 0
    if mode == "nospace":
        print("Traceback (most recent call last):\nOSError: [Errno 28] No space left on device", flush=True)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    if script.endswith("train_network.py"):
        value = {"nan": float("nan"), "zero": 0.0}.get(mode, 0.02)
        save_file(
            lora(cfg["network_dim"], cfg["network_alpha"], value),
            str(out),
            {"ss_network_module": cfg["network_module"], "ss_network_dim": str(cfg["network_dim"])},
        )
        if cfg.get("sample_prompts"):
            (out.parent / "sample").mkdir(exist_ok=True)
            (out.parent / "sample" / f"{cfg['output_name']}_000001.png").write_bytes(b"fake sample image")
        if cfg.get("save_every_n_steps"):
            (out.parent / f"{cfg['output_name']}-step00000001.safetensors").write_bytes(out.read_bytes())
    elif script.endswith("merge_lora.py") and "--sd_model" not in sys.argv:  # LoRA into LoRA (--concat): ranks stacked
        from safetensors.numpy import load_file

        i = sys.argv.index("--models") + 1
        first = load_file(sys.argv[i])
        dim = next(v.shape[0] for k, v in first.items() if k.endswith("lora_down.weight"))
        alpha = float(next(v for k, v in first.items() if k.endswith(".alpha")))
        save_file(lora(2 * dim, alpha, 0.02), str(out))
    elif script.endswith("merge_lora.py"):
        from safetensors import safe_open

        with safe_open(arg("--sd_model"), "numpy") as f:
            sd = {k: f.get_tensor(k) for k in f.keys() if k not in ("v_pred", "ztsnr")}  # sd-scripts' merge drops markers
        salt = float(os.environ.get("FAKE_MERGE_SALT", "0"))
        for k in sd:
            if k.startswith("model.diffusion_model."):
                sd[k] = sd[k] + 1 + salt
        save_file(sd, str(out), {"modelspec.date": str(time.time())})  # as sd-scripts' merge: a new date each time
    else:  # resize_lora.py
        rank = int(arg("--new_rank"))
        save_file(lora(rank, float(rank), 0.02), str(out))
    print(f"fake {script}: saved {out}", flush=True)
    return 0
