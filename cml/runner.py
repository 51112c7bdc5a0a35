"""Running one sd-scripts subprocess: argv list (never a shell), log file, live progress, signals, locks."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cml.errors import InputError
from cml.files import atomic_write
from cml.proc import group_kwargs, stop_group, termination_signals, try_lock

# tqdm's bar as sd-scripts prints it: "steps:  40%|####  | 4/10 [00:05<00:07,  1.2s/it, avr_loss=0.123]";
# tqdm writes the loss with "{:.3g}": 0.123, 1.2e-05, nan, inf, -inf.
TQDM = re.compile(r"(\d+)/(\d+) \[([^\]]*)\]")
LOSS = re.compile(r"avr_loss=([-+]?(?:nan|inf|[0-9.]+(?:[eE][-+]?\d+)?))")
# tqdm's own estimate of the time left: "<00:07" or "<1:02:03" ("<?" before it knows).
REMAINING = re.compile(r"<(?:(\d+):)?(\d+):(\d+)")


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    loss: float | None = None
    remaining: float | None = None  # seconds left, as tqdm estimates it
    marker: str = ""  # only bars whose line holds this (sd-scripts' training bar is "steps:")

    def update(self, text: str) -> bool:
        """Parse a line of trainer output; True when the step advanced."""
        if self.marker not in text:
            return False
        bars = list(TQDM.finditer(text))
        if not bars:
            return False
        m = bars[-1]  # the last bar on the line is the current one
        step, total = int(m.group(1)), int(m.group(2))
        lm = LOSS.search(m.group(3))
        if lm:
            try:
                self.loss = float(lm.group(1))
            except ValueError:
                pass
        rm = REMAINING.search(m.group(3))
        if rm:
            self.remaining = float(int(rm.group(1) or 0) * 3600 + int(rm.group(2)) * 60 + int(rm.group(3)))
        advanced = step > self.step or total != self.total
        self.step, self.total = step, total
        return advanced


def indented(lines: list[str], n: int = 12) -> str:
    """The last n lines, indented: how an error message quotes a subprocess's output."""
    return "\n".join(f"    {ln}" for ln in lines[-n:])


@dataclass
class Result:
    returncode: int
    tail: list[str]
    seconds: float


class LossNotFinite(Exception):
    """The trainer reported a NaN or infinite loss: the stage is stopped instead of training on to the end."""

    def __init__(self, step: int, total: int, loss: float):
        self.step, self.total, self.loss = step, total, loss
        super().__init__(f"training loss became {loss} at step {step}/{total}")


class Terminated(Exception):
    """SIGTERM/SIGHUP arrived: handled like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def run_logged(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    stream: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    tail_lines: int = 25,
    progress_marker: str = "",
    keep_fds: tuple[int, ...] = (),
    on_start: Callable[[int], None] | None = None,
) -> Result:
    """Run ``argv`` in its own process group; its output goes to ``log_path`` (and to stdout when ``stream``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    progress = Progress(marker=progress_marker)
    start = time.monotonic()
    old = {sig: signal.signal(sig, _raise_terminated) for sig in termination_signals()}
    try:  # the handlers are restored however the trainer ends
        with open(log_path, "ab") as log:
            log.write(f"$ (cd {cwd} && {' '.join(argv)})\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=keep_fds,  # the run lock: held as long as the trainer lives, even if cml is killed
                **group_kwargs(),
            )
            if on_start is not None:
                on_start(proc.pid)
            try:
                pending = ""
                assert proc.stdout is not None  # stdout=PIPE
                out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
                while True:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    log.write(chunk)
                    log.flush()
                    if stream and out is not None:
                        out.write(chunk)
                        out.flush()
                    pending += chunk.decode("utf-8", "replace")
                    *lines, pending = re.split(r"[\r\n]", pending)
                    for line in lines:
                        if line.strip():
                            tail.append(line.rstrip())
                            advanced = progress.update(line)
                            if progress.loss is not None and not math.isfinite(progress.loss):
                                raise LossNotFinite(progress.step, progress.total, progress.loss)
                            if advanced and on_progress:
                                on_progress(progress)
                if pending.strip():
                    tail.append(pending.rstrip())
                rc = proc.wait()
            except BaseException as e:
                stop_group(proc)
                why = str(e) if isinstance(e, LossNotFinite) else "interrupted"
                log.write(f"\n[cml] stopped: {why}\n".encode())
                raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return Result(rc, list(tail), time.monotonic() - start)


class RunLock:
    """One writer per run folder (cml run, plan and check): a second one refuses at once.

    POSIX: flock on .cml.lock, and the locked descriptor is handed to the trainer (pass_fds), so the lock is held
    as long as the trainer lives, even if cml itself is killed. Windows: msvcrt's byte lock (cml.proc).
    filelock's own descriptor could not be handed on (pass_fds failed with EBADF, filelock 4.3.1), hence these.
    .cml.pid names the holders: cml's pid, and the trainer's while one runs.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".cml.lock"
        self.pid_file = run_dir / ".cml.pid"
        self.fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as .cml.pid says and as the processes still alive bear out."""
        import psutil

        try:
            data = json.loads(self.pid_file.read_text())
            cml_pid, trainer = int(data.get("cml", 0)), int(data.get("trainer", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return "another process"
        if cml_pid and psutil.pid_exists(cml_pid):
            return f"cml, pid {cml_pid}" + (f", and its trainer, pid {trainer}" if trainer and psutil.pid_exists(trainer) else "")
        if trainer and psutil.pid_exists(trainer):
            return f"the trainer an earlier cml run started, pid {trainer}, which still runs although that cml (pid {cml_pid}) has ended"
        return "another process"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not try_lock(fd):
            os.close(fd)
            raise InputError(
                f"another cml run is using this run folder ({self.holder()})",
                str(self.path.parent),
                "wait for it to finish, or set another name / output_dir",
            )
        self.fd = fd
        self.note_trainer(None)
        return self

    def note_trainer(self, pid: int | None) -> None:
        atomic_write(self.pid_file, json.dumps({"cml": os.getpid(), "trainer": pid or 0}))

    def __exit__(self, *exc) -> None:
        # Closed, not unlocked: a trainer started with this descriptor keeps the lock while it lives.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
