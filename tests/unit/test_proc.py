"""The platform switch (cml/proc.py): Windows cannot be run here, so its branch is checked against fakes."""

import signal
import subprocess

from cml.proc import group_kwargs, stop_group, termination_signals


def test_process_group_per_platform():
    assert set(group_kwargs(windows=True)) == {"creationflags"}
    linux = group_kwargs(windows=False, platform="linux")
    assert linux["start_new_session"] is True and callable(linux["preexec_fn"])  # parent-death signal
    assert group_kwargs(windows=False, platform="darwin") == {"start_new_session": True}
    assert signal.SIGHUP in termination_signals(windows=False)
    assert signal.SIGTERM in termination_signals(windows=True)


class StubbornProc:
    """A child that never ends: stop_group must go through every step."""

    def __init__(self):
        self.calls = []

    def poll(self):
        return None

    def wait(self, timeout=None):
        raise subprocess.TimeoutExpired("x", timeout)

    def send_signal(self, sig):
        self.calls.append(("signal", sig))

    def terminate(self):
        self.calls.append(("terminate",))

    def kill(self):
        self.calls.append(("kill",))


def test_windows_stop_is_ctrl_break_then_terminate_then_kill():
    p = StubbornProc()
    stop_group(p, grace=0, windows=True)
    assert [c[0] for c in p.calls] == ["signal", "terminate", "kill"]
