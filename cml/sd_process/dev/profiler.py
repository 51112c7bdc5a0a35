"""The step profiler (``CML_PROFILE=FILE:N``, make bench-gpu): a developer tool, composed into cml's trainer as one
concern (cml/sd_process/trainer.py) through sd-scripts' own ``on_step_start`` hook."""

from __future__ import annotations


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


class Profiling:
    """The trainer concern: ``profiler.step()`` at the start of every training step (sd-scripts' on_step_start hook)."""

    cml_profiler: StepProfiler

    def on_step_start(self, args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train: bool = True):
        if is_train:
            self.cml_profiler.step()
        return super().on_step_start(args, accelerator, network, text_encoders, unet, batch, weight_dtype, is_train=is_train)  # type: ignore[misc]
