"""Running one sd-scripts subprocess: argv list (never a shell), log file, live progress, signals, locks."""

from __future__ import annotations

import fcntl
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cml.errors import InputError

# tqdm's bar as sd-scripts prints it: "steps:  40%|####  | 4/10 [00:05<00:07,  1.2s/it, avr_loss=0.123]";
# tqdm writes the loss with "{:.3g}": 0.123, 1.2e-05, nan, inf, -inf.
TQDM = re.compile(r"(\d+)/(\d+) \[([^\]]*)\]")
LOSS = re.compile(r"avr_loss=([-+]?(?:nan|inf|[0-9.]+(?:[eE][-+]?\d+)?))")


@dataclass
class Progress:
    step: int = 0
    total: int = 0
    loss: float | None = None
    started: float = field(default_factory=time.monotonic)
    first_step_at: float | None = None
    first_step: int = 0
    marker: str = ""  # only bars whose line holds this (sd-scripts' training bar is "steps:")

    def update(self, text: str) -> bool:
        """Parse a line of trainer output; True when the step advanced."""
        if self.marker not in text:
            return False
        m = None
        for m in TQDM.finditer(text):
            pass
        if not m:
            return False
        step, total = int(m.group(1)), int(m.group(2))
        lm = LOSS.search(m.group(3))
        if lm:
            try:
                self.loss = float(lm.group(1))
            except ValueError:
                pass
        advanced = step > self.step or total != self.total
        if step > 0 and self.first_step_at is None:
            self.first_step_at = time.monotonic()
            self.first_step = step
        self.step, self.total = step, total
        return advanced

    def eta(self) -> float | None:
        if self.first_step_at is None or self.step <= self.first_step or not self.total:
            return None
        rate = (time.monotonic() - self.first_step_at) / (self.step - self.first_step)
        return rate * (self.total - self.step)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "--"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the child's whole process group: SIGINT (sd-scripts stops cleanly), then TERM, then KILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    # Children the trainer left behind (data loader workers) share its group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with(parent: int) -> Callable[[], None]:
    """For the child, before exec (Linux): SIGTERM when cml dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""

    def in_child() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # cml died before the prctl took effect
            os._exit(1)

    return in_child


def run_logged(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    mode: str = "normal",  # quiet | normal | verbose
    on_progress: Callable[[Progress], None] | None = None,
    tail_lines: int = 25,
    progress_marker: str = "",
    keep_fds: tuple[int, ...] = (),
) -> Result:
    """Run ``argv`` in its own process group, copy its output to ``log_path`` (and the terminal)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    progress = Progress(marker=progress_marker)
    start = time.monotonic()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated)
    old_hup = signal.signal(signal.SIGHUP, _raise_terminated)
    with open(log_path, "ab") as log:
        log.write(f"$ (cd {cwd} && {' '.join(argv)})\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            pass_fds=keep_fds,  # the run lock: held as long as the trainer lives, even if cml is killed
            preexec_fn=_die_with(os.getpid()) if sys.platform.startswith("linux") else None,
        )
        try:
            pending = ""
            out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if mode != "quiet" and out is not None:
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
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGHUP, old_hup)
    return Result(rc, list(tail), time.monotonic() - start)


class RunLock:
    """One run per run folder: a second `cml run` on the same folder refuses at once."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".cml.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise InputError(f"another cml run is using this run folder (pid {holder})", str(self.path.parent), "wait for it to finish, or set another name / output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        # Closed, not unlocked: a trainer started with this descriptor (pass_fds) keeps the lock while it lives.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
