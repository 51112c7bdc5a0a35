"""What cml prints: its own lines, and the trainer's progress, suited to a terminal or to a log file.

The trainer's whole output always goes to the stage's ``log.txt``; ``--verbose`` also streams it. Otherwise cml
shows one progress line per stage: on a terminal, rewritten in place; when output goes to a file, a new line at
most every ~10% of the steps or every 30 s, so a log of a whole run stays a few kB per stage.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

Mode = str  # "quiet" | "normal" | "verbose"
EVERY_FRACTION = 0.1
EVERY_SECONDS = 30.0


def say(msg: str) -> None:
    print(f"cml: {msg}", file=sys.stderr, flush=True)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def interactive(stream: TextIO | None = None) -> bool:
    """Whether cml's output reaches a person at a terminal (else: a file, a pipe, CI)."""
    streams = [stream] if stream is not None else [sys.stdout, sys.stderr]
    return all(getattr(s, "isatty", lambda: False)() for s in streams)


@dataclass
class StageProgress:
    """Progress lines for one stage. ``update`` takes (step, total, loss, seconds left)."""

    name: str
    mode: Mode = "normal"
    tty: bool = field(default_factory=interactive)
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    clock: object = time.monotonic
    _last_step: int = 0
    _last_time: float | None = None
    _open_line: bool = False

    def line(self, step: int, total: int, loss: float | None, remaining: float | None) -> str:
        pct = f"{100 * step // total:3d}%" if total else ""
        loss_s = f"  loss {loss:.4f}" if loss is not None else ""
        return f"cml: {self.name}: step {step}/{total} {pct}{loss_s}  ETA {fmt_seconds(remaining)}"

    def update(self, step: int, total: int, loss: float | None, remaining: float | None) -> None:
        if self.mode != "normal":
            return  # quiet: cml's own lines only; verbose: the trainer's own bar is streamed
        now = self.clock()  # type: ignore[operator]
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(step, total, loss, remaining))
            self.stream.flush()
            self._open_line = True
            return
        due = self._last_time is None or step - self._last_step >= max(1, int(total * EVERY_FRACTION)) or now - self._last_time >= EVERY_SECONDS
        if due or step == total:
            self.stream.write(self.line(step, total, loss, remaining) + "\n")
            self.stream.flush()
            self._last_step, self._last_time = step, now

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
