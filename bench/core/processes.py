"""Process control shared by the sweep and the processes it starts: the stop that ends a sweep at once, and
tying a child process's life to its parent's."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


class Stopped(BaseException):
    """The sweep is to stop at once, its group in progress left without rows (a resume runs it): raised by the
    sweep's handler of a stopping signal, or where a process of the sweep was ended by one. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` turns it into a case's error row."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

# Signals that end a process on request rather than by a fault: a sitting ended by one was stopped from outside.


STOPPING_SIGNALS = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGTERM})


def die_with(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent ends, however it ends (Linux's PR_SET_PDEATHSIG), so
    that a killed sweep leaves no sitting running on; a parent already gone ends this process now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the sweep still terminates its sittings when it stops
        return
    if os.getppid() != parent_pid:
        os._exit(1)
