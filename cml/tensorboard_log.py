"""Per-step training loss, read back from the TensorBoard logs sd-scripts writes (``--log_with tensorboard``)."""

from __future__ import annotations

from pathlib import Path


def read_losses(logs_dir: Path, tag: str = "loss/current") -> list[tuple[int, float]]:
    """(step, loss) of the newest run under ``logs_dir``; empty when there is none."""
    if not logs_dir.is_dir():
        return []
    events = sorted(logs_dir.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not events:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, float(e.value)) for e in acc.Scalars(tag)]
