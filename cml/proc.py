"""What differs per platform: the run lock, and the trainer's process group (started in its own group, stopped
with everything it started).

POSIX: a new session (process group); stopped with SIGINT (sd-scripts stops cleanly), SIGTERM, then SIGKILL to
the group; on Linux the trainer also gets SIGTERM if cml dies (parent-death signal). Windows: a new process
group; stopped with CTRL_BREAK, then terminate() and kill(). Windows is not tested here (no Windows machine):
the switch itself is unit-tested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

WINDOWS = os.name == "nt"


def _die_with(parent: int) -> Callable[[], None]:
    """For the child, before it runs (Linux): SIGTERM when cml dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""

    def in_child() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # cml died before the prctl took effect
            os._exit(1)

    return in_child


def try_lock(fd: int, windows: bool = WINDOWS) -> bool:
    """An exclusive, non-blocking lock on an open file; False when another process holds it."""
    if windows:
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]  # Windows-only module
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def group_kwargs(windows: bool = WINDOWS, platform: str = sys.platform) -> dict[str, Any]:
    """Popen arguments that start the child in a process group of its own."""
    if windows:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    kw: dict[str, Any] = {"start_new_session": True}
    if platform.startswith("linux"):
        kw["preexec_fn"] = _die_with(os.getpid())
    return kw


def termination_signals(windows: bool = WINDOWS) -> list[int]:
    """Signals that mean "stop" to cml itself, handled like Ctrl-C."""
    names = ["SIGTERM", "SIGBREAK"] if windows else ["SIGTERM", "SIGHUP"]
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


def stop_group(proc: subprocess.Popen, grace: float = 10.0, windows: bool = WINDOWS) -> None:
    """End the child's whole process group, politely first."""
    if windows:
        steps: list[tuple[Callable[[], None], float]] = [
            (lambda: proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM)), grace),
            (proc.terminate, 5.0),
            (proc.kill, 5.0),
        ]
    else:

        def to_group(sig: int) -> Callable[[], None]:
            return lambda: os.killpg(proc.pid, sig)

        steps = [(to_group(s), w) for s, w in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))]
    for send, wait in steps:
        if proc.poll() is not None:
            break
        try:
            send()
        except (ProcessLookupError, OSError):
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if not windows:  # children the trainer left behind (data loader workers) share its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
