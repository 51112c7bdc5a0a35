"""sd-scripts' LoRA trainers as cml runs them: their own classes and code, with exact speed-ups.

    python -m cml.kohya.train train_network|sdxl_train_network [--cml_direct_a DATASET_A.toml
        --cml_direct_multiplier W --cml_direct_timesteps MIN,MAX] --config_file train.toml

Runs in sd-scripts' folder with its Python (sd-scripts on the path). The trainer is sd-scripts' ``NetworkTrainer``
(or ``SdxlNetworkTrainer``), started the way its own ``__main__`` starts it, with these changes, each giving the
same LoRA bit for bit (tests/sdscripts/test_speedups.py trains both ways and compares):

- **The text encoder's output, computed once.** U-Net-only training with one fixed caption (the article: an empty
  one) runs the frozen text encoder on the same tokens at every step. Its output is kept and handed back while
  the tokens are the same and no gradient is asked for: the same tensor the encoder would compute again. (SDXL
  stages already cache it with sd-scripts' own ``cache_text_encoder_outputs``.)
- **bitsandbytes' 8-bit optimizers without a device sync per parameter.** ``Optimizer8bit.step`` calls
  ``torch.cuda.synchronize()`` after each of its parameters (384 for a dim-16 SD1.5 LoRA): the host waits for the
  GPU 384 times a step. The same kernels run in the same order on one stream without it; the step's last sync
  is kept for paged optimizers, as bitsandbytes does.
- the LoRA module's forward without multiplies by 1.0: cml/kohya/lora.py (``network_module = cml.kohya.lora``);
- **no random weights drawn only to be overwritten.** An SD1/SD2 checkpoint's models are built without their
  layers' random initialisation, and torch's generator is set where the draws would have left it
  (cml/kohya/model_init.py): ~7 s less per stage on a 2-core CPU;
- **no second sha256 of the base model.** sd-scripts hashes the whole model file for the LoRA's metadata
  (``ss_new_sd_model_hash``) at every stage: 2 GB for SD1.5, 7 GB for SDXL. cml hashed it already; where cml's cache
  holds that very file (path, size, mtime, inode and ctime unchanged), its sha256 is used: the same string.

With ``--cml_direct_*`` it trains **the direct method** (hako-mikan's sd-webui-traintrain, ADDifT, ``train_diff2``),
on the same trainer, model loading, dataset, latent caching and LoRA network (see DirectStep).
"""

from __future__ import annotations

import sys
from typing import Any

from cml.kohya import CML_NETWORK_MODULE, model_init


class FixedTextEncoding:
    """A text encoding strategy that computes each distinct set of tokens once, while no gradient is asked for."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._tokens: list | None = None
        self._out: Any = None
        self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_tokens(self, tokenize_strategy, models, tokens):
        import torch

        if torch.is_grad_enabled():  # a text encoder that trains: nothing may be kept
            return self._inner.encode_tokens(tokenize_strategy, models, tokens)
        same = (
            self._tokens is not None
            and len(self._tokens) == len(tokens)
            and all(a.shape == b.shape and torch.equal(a, b.to(a.device)) for a, b in zip(self._tokens, tokens))
        )
        if same:
            self.reused += 1
            return self._out
        self._out = self._inner.encode_tokens(tokenize_strategy, models, tokens)
        self._tokens = [t.detach().clone() for t in tokens]
        return self._out


def unsynced_step(self, closure=None):
    """bitsandbytes' Optimizer8bit.step (0.4x-0.5x), less the torch.cuda.synchronize() after each parameter."""
    import torch
    from bitsandbytes.utils import sync_gpu

    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    if not self.initialized:
        self.check_overrides()
        self.to_gpu()
        self.initialized = True
    p = None
    for gindex, group in enumerate(self.param_groups):
        for pindex, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            if len(state) == 0:
                self.init_state(group, p, gindex, pindex)
            self.prefetch_state(p)
            self.update_step(group, p, gindex, pindex)
    if self.is_paged and p is not None:
        sync_gpu(p)  # paged operations are asynchronous: one sync at the end, as bitsandbytes does
    return loss


def patch_model_hash() -> None:
    """sd-scripts' calculate_sha256, answered from cml's cache for a file cml has hashed (the same sha256)."""
    from pathlib import Path

    from library import train_util

    from cml.model_files import cached_sha256

    own = train_util.calculate_sha256

    def calculate_sha256(filename):
        return cached_sha256(Path(filename)) or own(filename)

    train_util.calculate_sha256 = calculate_sha256


def patch_8bit_optimizers() -> bool:
    """Swap in unsynced_step where bitsandbytes has the step it was written from; False where it does not."""
    try:
        from bitsandbytes.optim import optimizer
    except Exception:  # no bitsandbytes here: nothing to speed up
        return False
    import inspect

    src = inspect.getsource(optimizer.Optimizer8bit.step)
    if "sync_gpu(p)" not in src or "self.update_step(group, p, gindex, pindex)" not in src:
        return False  # another bitsandbytes: leave its step as it is
    optimizer.Optimizer8bit.step = unsynced_step  # type: ignore[method-assign]  # the class, in the trainer process only
    return True


class StepProfiler:
    """``CML_PROFILE=FILE:N`` (make bench-gpu): torch.profiler over N training steps after SKIP steps of warm-up. FILE
    gets, per step: the wall time, the host's time in tensor operations, the device's busy time, and the device's
    share of the wall time (its utilisation), with the operations that cost most on each side."""

    SKIP, WARMUP = 10, 2

    def __init__(self, path: str, steps: int):
        import torch

        self.torch, self.path, self.steps = torch, path, steps
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        schedule = torch.profiler.schedule(wait=self.SKIP, warmup=self.WARMUP, active=steps, repeat=1)
        self.prof = torch.profiler.profile(activities=acts, schedule=schedule, on_trace_ready=self.write)
        self.prof.start()
        self.times: list[float] = []

    def step(self) -> None:
        """At the start of every training step: the interval since the last call is one whole step."""
        import time

        if len(self.times) + 1 in (self.SKIP + self.WARMUP, self.SKIP + self.WARMUP + self.steps) and self.torch.cuda.is_available():
            self.torch.cuda.synchronize()  # the window's two ends only: the steps inside run as they would
        self.times.append(time.perf_counter())
        self.prof.step()

    def write(self, prof) -> None:
        import json

        every = prof.key_averages()
        events = [e for e in every if not e.key.startswith("ProfilerStep")]  # the step itself: its self time is the rest
        device = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0  # noqa: E731
        host_us, device_us = sum(e.self_cpu_time_total for e in events), sum(device(e) for e in events)
        other_us = sum(e.self_cpu_time_total for e in every if e.key.startswith("ProfilerStep"))
        wall_s = self.times[-1] - self.times[self.SKIP + self.WARMUP - 1]
        n = self.steps
        top = lambda key: [{"op": e.key, "ms_per_step": key(e) / n / 1e3} for e in sorted(events, key=key, reverse=True)[:8]]  # noqa: E731
        out = {
            "steps": n,
            "wall_ms_per_step": wall_s / n * 1e3,
            "host_op_ms_per_step": host_us / n / 1e3,
            "host_other_ms_per_step": other_us / n / 1e3,  # in the step, outside any tensor operation: Python, the loop
            "device_ms_per_step": device_us / n / 1e3,
            "device_busy": device_us / 1e6 / wall_s if wall_s > 0 else None,
            "host_events_per_step": sum(e.count for e in events) / n,  # operations, nested ones included
            "top_host": top(lambda e: e.self_cpu_time_total),
            "top_device": top(device),
        }
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


def step_profiler(stage: str) -> StepProfiler | None:
    """The profiler CML_PROFILE asks for (STAGE in its file name: the stage's output name), or None."""
    import os

    spec = os.environ.get("CML_PROFILE")
    if not spec:
        return None
    path, steps = spec.rsplit(":", 1)
    return StepProfiler(path.replace("STAGE", stage), int(steps))


def direct_timestep(step: int, lo: int, hi: int) -> int:
    """The timestep of a direct step, as train_diff2 gives it: each pair of steps (the +w step, then the -w step) takes
    the next of lo + (hi - lo) * k / 10 for k = 1, 3, 5, 7, 9. (train_diff2 draws from [t, t + 1): one value.)"""
    k = (2 * (step // 2)) % 10 + 1
    return min(int(lo + (hi - lo) * k / 10), hi - 1, 999)


class DirectStep:
    """One step of the direct method: A and B noised with the same noise to the same timestep; the target is the
    frozen model (the LoRA at 0, no gradient) on one of them, the prediction the model with the LoRA at +w on noisy
    B (target from A) or, on alternate steps, at -w on noisy A (target from B). The loss is sd-scripts' own, on
    (prediction, target): the objective carries over to v-prediction, as both passes share noise and timestep."""

    def __init__(self, a_dataset: str, multiplier: float, timesteps: tuple[int, int]):
        self.a_dataset, self.w, self.timesteps = a_dataset, multiplier, timesteps
        self.a_latents: dict = {}  # file name -> A's cached latents (sd-scripts' own caching)
        self.by_b: dict[bytes, str] = {}  # a B's cached latents (their bytes' digest) -> its file name
        self.step = 0

    def sides(self):
        """(multiplier, which latents the target comes from): +w with the target from A, -w with it from B."""
        return (self.w, "a") if self.step % 2 == 0 else (-self.w, "b")

    @staticmethod
    def digest(latents) -> bytes:
        import hashlib

        return hashlib.sha256(latents.detach().float().cpu().numpy().tobytes()).digest()

    def cache_a(self, trainer, args, accelerator, vae, b_group) -> None:
        """A's latents, cached by sd-scripts' own code from dataset_a.toml; and which B each training batch row is:
        sd-scripts' batches carry B's cached latents but not its file name, so B is known by its latents' bytes."""
        from pathlib import Path

        from library import config_util

        for dataset in b_group.datasets:
            for info in dataset.image_data.values():
                if info.latents is None:
                    raise RuntimeError("the direct method needs B's latents in memory: do not set cache_latents_to_disk")
                self.by_b[self.digest(info.latents)] = Path(info.absolute_path).name

        blueprint = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, args.masked_loss, True)).generate(
            config_util.load_user_config(self.a_dataset), args
        )
        group, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
        device = vae.device
        vae.to(accelerator.device)
        group.new_cache_latents(vae, accelerator)
        vae.to(device)
        for dataset in group.datasets:
            for info in dataset.image_data.values():
                if info.latents is None:
                    raise RuntimeError("the direct method needs A's latents in memory: do not set cache_latents_to_disk")
                self.a_latents[Path(info.absolute_path).name] = info.latents

    def a_of(self, trainer, args, batch, like):
        import torch

        names = [self.by_b[self.digest(row)] for row in batch["latents"]]
        a = torch.stack([self.a_latents[n] for n in names]).to(like.device, dtype=like.dtype)
        return trainer.shift_scale_latents(args, a)


def trainer_class(script: str, direct: DirectStep | None = None):
    """sd-scripts' trainer of ``script``, with the text encoder's output kept (and the direct method's step)."""
    module = __import__(script)
    base = module.SdxlNetworkTrainer if script == "sdxl_train_network" else module.NetworkTrainer

    class Trainer(base):  # type: ignore[misc, valid-type]
        def post_process_network(self, args, accelerator, network, text_encoders, unet):
            super().post_process_network(args, accelerator, network, text_encoders, unet)
            if args.network_module == CML_NETWORK_MODULE:
                plain_lora_metadata(network)
            if direct is not None:
                scale_saved_lora(network, direct.w)

        def get_text_encoding_strategy(self, args):
            inner = super().get_text_encoding_strategy(args)
            self.cml_text_encoding = FixedTextEncoding(inner) if args.network_train_unet_only and not args.weighted_captions else inner
            return self.cml_text_encoding

        if direct is not None:

            def cache_text_encoder_outputs_if_needed(self, args, accelerator, unet, vae, text_encoders, dataset, weight_dtype):
                direct.cache_a(self, args, accelerator, vae, dataset)
                return super().cache_text_encoder_outputs_if_needed(args, accelerator, unet, vae, text_encoders, dataset, weight_dtype)

            def get_noise_pred_and_target(
                self, args, accelerator, noise_scheduler, latents, batch, text_encoder_conds, unet, network, weight_dtype, train_unet, is_train=True
            ):
                import torch

                net = accelerator.unwrap_model(network)
                mult, target_from = direct.sides()
                a = direct.a_of(self, args, batch, latents)
                src, dst = (a, latents) if target_from == "a" else (latents, a)
                noise = torch.randn_like(latents)
                t = direct_timestep(direct.step, *direct.timesteps)
                timesteps = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
                noisy_src = noise_scheduler.add_noise(src, noise, timesteps)
                noisy_dst = noise_scheduler.add_noise(dst, noise, timesteps)
                noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.cpu()  # as sd-scripts leaves it
                net.set_multiplier(0.0)
                with torch.no_grad(), accelerator.autocast():
                    target = self.call_unet(args, accelerator, unet, noisy_src, timesteps, text_encoder_conds, batch, weight_dtype)
                net.set_multiplier(mult)
                with torch.set_grad_enabled(is_train), accelerator.autocast():
                    pred = self.call_unet(args, accelerator, unet, noisy_dst.requires_grad_(train_unet), timesteps, text_encoder_conds, batch, weight_dtype)
                net.set_multiplier(direct.w)  # samples drawn during training: what weight 1 of the saved LoRA gives
                if is_train:
                    direct.step += 1
                return pred, target.detach(), timesteps, None

    return module, Trainer


def profiled(trainer, profiler: StepProfiler):
    """The trainer class with ``profiler.step()`` at the start of every training step."""

    class Profiled(trainer):  # type: ignore[misc, valid-type]
        def get_noise_pred_and_target(self, *args, **kwargs):
            if kwargs.get("is_train", True):
                profiler.step()
            return super().get_noise_pred_and_target(*args, **kwargs)

    return Profiled


def plain_lora_metadata(network) -> None:
    """Files saved by cml's networks.lora say what they are: a plain networks.lora LoRA (every loader's key), and
    which module trained it in cml's own key: also when commands.sh runs the trainer without cml."""
    original = network.save_weights

    def save_weights(file, dtype, metadata):
        if metadata is not None and metadata.get("ss_network_module") == CML_NETWORK_MODULE:
            metadata["ss_network_module"] = "networks.lora"
            metadata["cml_network_module"] = CML_NETWORK_MODULE
        return original(file, dtype, metadata)

    network.save_weights = save_weights


def scale_saved_lora(network, w: float) -> None:
    """Every file the network saves holds lora_up x w: weight 1 then gives what +w gave in training (the weights in
    training are left as they are)."""
    original = network.save_weights

    def save_weights(file, dtype, metadata):
        import torch

        ups = [m.lora_up.weight for m in network.unet_loras + network.text_encoder_loras]
        kept = [u.detach().clone() for u in ups]
        try:
            with torch.no_grad():
                for u in ups:
                    u.mul_(w)
            if metadata is not None:
                metadata["cml_direct_scaled"] = f"lora_up x {w}"
            return original(file, dtype, metadata)
        finally:
            with torch.no_grad():
                for u, k in zip(ups, kept):
                    u.copy_(k)

    network.save_weights = save_weights


def direct_args(argv: list[str]) -> tuple[DirectStep | None, list[str]]:
    """cml's own options (--cml_direct_*), taken out before sd-scripts' parser sees the rest."""
    opts: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        if a.startswith("--cml_direct_"):
            opts[a.removeprefix("--cml_direct_")] = next(it)
        else:
            rest.append(a)
    if not opts:
        return None, rest
    lo, hi = (int(x) for x in opts["timesteps"].split(","))
    return DirectStep(opts["a"], float(opts["multiplier"]), (lo, hi)), rest


def main(argv: list[str]) -> int:
    script, (direct, rest) = argv[0], direct_args(argv[1:])
    module, trainer = trainer_class(script, direct)
    from library import train_util

    parser = module.setup_parser()
    args = parser.parse_args(rest)
    train_util.verify_command_line_training_args(args)
    sys.argv = [f"{script}.py", *rest]  # read_config_from_file reads sys.argv again
    args = train_util.read_config_from_file(args, parser)
    profiler = step_profiler(str(getattr(args, "output_name", None) or "stage"))
    if profiler is not None:
        trainer = profiled(trainer, profiler)
    patch_model_hash()
    model_init.patch(exact=True)
    optimizer = str(getattr(args, "optimizer_type", "") or "").lower()
    if "8bit" in optimizer or optimizer.startswith("paged"):
        patch_8bit_optimizers()
    trainer().train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
