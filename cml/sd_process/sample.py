"""The check's images for the DiT families, drawn by the family's own trainer (its models, its sampling code) in
one process: ``python -m cml.sd_process.train TRAINER --cml_sample JOBS.json --config_file check.toml``.

sd-scripts' minimal inference scripts fetch their tokenizers from the hub; its trainers load them from
``tokenizer_cache_dir`` and draw samples with the family's own sampler (``sample_images``). The trainer is started
as for training (``sample_at_first``; the text encoders' outputs of every prompt cached as its own caching does),
and at step 0, before any update, ``CheckSampling`` takes over its ``sample_images`` hook: it loads the check's
LoRAs with the family's network module (``create_network_from_weights``, ``apply_to``), and for each job sets their
multipliers and lets sd-scripts draw the job's one prompt, then stops the trainer. The LoRA it was about to train
is new (its up weights zero): it changes nothing.

JOBS.json: {"loras": [paths], "prompt": {width, height, sample_steps, scale, guidance_scale},
"jobs": [{"prompt": str, "seed": int, "muls": [float per LoRA], "out": path}]}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


class SamplingDone(Exception):
    """Every job of the check is drawn: the trainer stops before its first step."""


class CheckSampling:
    cml_sample: dict

    def sample_images(self, accelerator, args, epoch, global_step, *models):
        import importlib

        if global_step != 0 or epoch is not None and epoch != 0:
            return None
        device, vae, tokenizer, text_encoder, unet = models
        module = importlib.import_module(args.network_module)
        # The check's LoRAs are U-Net (DiT) only; text encoders the trainer freed (their outputs cached) are none.
        encoders = text_encoder if text_encoder is not None else []
        nets = []
        for path in self.cml_sample["loras"]:
            net, weights = module.create_network_from_weights(1.0, path, vae, encoders, unet, for_inference=True)
            net.apply_to(encoders, unet, apply_text_encoder=False, apply_unet=True)
            net.load_state_dict(weights, strict=False)
            net.to(accelerator.device, dtype=next(p.dtype for p in accelerator.unwrap_model(unet).parameters() if p.is_floating_point()))
            net.eval()
            nets.append(net)
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        samples = Path(args.output_dir) / "sample"
        one = Path(args.output_dir) / "job.json"
        args.sample_at_first = True
        for job in self.cml_sample["jobs"]:
            for net, m in zip(nets, job["muls"]):
                net.set_multiplier(float(m))
            one.write_text(json.dumps([{**self.cml_sample["prompt"], "prompt": job["prompt"], "seed": job["seed"]}]), encoding="utf-8")
            args.sample_prompts = str(one)
            before = set(samples.glob("*.png")) if samples.is_dir() else set()
            super().sample_images(accelerator, args, 0, 0, *models)  # type: ignore[misc]
            made = sorted(set(samples.glob("*.png")) - before, key=os.path.getmtime)
            if len(made) != 1:
                raise RuntimeError(f"the trainer's sampling made {len(made)} images for one prompt")
            Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(made[0]), job["out"])
            print(f"cml: sample: {job['out']}", flush=True)
        raise SamplingDone
