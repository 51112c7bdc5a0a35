"""The direct method's step (hako-mikan's sd-webui-traintrain, ADDifT, ``train_diff2``), on sd-scripts' own
trainer: A and B noised with the same noise to the same timestep; the target is the frozen model (the LoRA at 0, no
gradient) on one of them, the prediction the model with the LoRA at +w on noisy B (target from A) or, on alternate
steps, at -w on noisy A (target from B). The loss is sd-scripts' own, on (prediction, target): the objective carries
over to v-prediction, as both passes share noise and timestep. cml/sd_process/trainer.py's DirectMethod runs it."""

from __future__ import annotations

from typing import Any


def direct_timestep(step: int, lo: int, hi: int) -> int:
    """The timestep of a direct step, as train_diff2 gives it: each pair of steps (the +w step, then the -w step) takes
    the next of lo + (hi - lo) * k / 10 for k = 1, 3, 5, 7, 9. (train_diff2 draws from [t, t + 1): one value.)"""
    k = (2 * (step // 2)) % 10 + 1
    return min(int(lo + (hi - lo) * k / 10), hi - 1, 999)


class DirectStep:
    """The direct method's state in one training run: its settings, A's latents, which A each B is, the step count."""

    def __init__(self, a_dataset: str, multiplier: float, timesteps: tuple[int, int]):
        self.a_dataset, self.w, self.timesteps = a_dataset, multiplier, timesteps
        self.a_latents: dict[str, Any] = {}  # file name -> A's cached latents (sd-scripts' own caching)
        self.by_b: dict[bytes, str] = {}  # a B's cached latents (their bytes' digest) -> its file name
        self.step = 0

    def sides(self) -> tuple[float, str]:
        """(multiplier, which latents the target comes from): +w with the target from A, -w with it from B."""
        return (self.w, "a") if self.step % 2 == 0 else (-self.w, "b")

    @staticmethod
    def digest(latents) -> bytes:
        import hashlib

        return hashlib.sha256(latents.detach().float().cpu().numpy().tobytes()).digest()

    def cache_a(self, args, accelerator, vae, b_group) -> None:
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
