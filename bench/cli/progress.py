"""What a sweep shows and how it stops: the progress bar, and the signals that end a sweep cleanly."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Sequence

from tqdm import tqdm

from bench.core.processes import Stopped


class SweepProgress:
    """The sweep's tqdm bar, in cases. Cases already complete count at once (tqdm's ``initial``, so that they
    stay out of its rate and ETA). A running group's cases advance together as its work does (``advance``,
    in-process: each pass prepared, each sitting of rounds), and a case counts whole when its row is written.
    The estimate is the time so far per case done, partial groups included (no smoothing: a group's rows come
    together). The postfix names the cases running (the first group's, and how many more groups run beside
    it). ``run_sweep`` reports the complete cases before it starts one: the bar opens with the first."""

    BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, total: int, disable: bool) -> None:
        self.total, self.disable = total, disable
        self.already_complete = 0
        self.written = 0  # rows written by this sweep
        self.bar: tqdm | None = None
        self.running: list[Sequence[Any]] = []  # the groups started and not all written yet, oldest first
        self.done: dict[str, float] = {}  # each running case's work done so far, as a fraction of it

    def progress(self, case: Any, already_done: bool) -> None:
        if already_done:
            self.already_complete += 1
            return
        del self.done[case.key]
        self.written += 1
        running = [group for group in self.running if any(member.key in self.done for member in group)]
        finished, self.running = len(running) < len(self.running), running
        self.bar.set_postfix_str(self._running_text(), refresh=False)
        self._count(refresh=finished)  # a group's rows come together: drawn once, with the last

    def advance(self, cases: Sequence[Any], fraction: float) -> None:
        """``RunContext.on_progress``: the running ``cases`` are ``fraction`` done. Cases the bar is not running
        are left alone, and a lower fraction (a retry of noisy cases starting over) is no step back."""
        moved = False
        for case in cases:
            before = self.done.get(case.key)
            if before is not None and fraction > before:
                self.done[case.key] = fraction
                moved = True
        if moved:
            self._count(refresh=True)

    def _count(self, refresh: bool) -> None:
        """Set the bar to the cases done: a sum, not increments, so that fractions never drift past the total."""
        self.bar.n = self.already_complete + self.written + sum(self.done.values())
        if refresh:
            self.bar.refresh()

    def starting(self, cases: Sequence[Any]) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.already_complete, disable=self.disable, unit="case",
                            dynamic_ncols=True, smoothing=0, bar_format=self.BAR_FORMAT)
        self.running.append(cases)
        self.done.update((case.key, 0.0) for case in cases)
        self.bar.set_postfix_str(self._running_text())

    def _running_text(self) -> str:
        if not self.running:
            return ""
        first = self.running[0]
        together = f" and {len(first) - 1} more, timed together" if len(first) > 1 else ""
        beside = f"; {len(self.running) - 1} more groups running" if len(self.running) > 1 else ""
        return f"running {first[0].label()}{together}{beside}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSignals:
    """While in ``with``, the signals that end a sweep stop it cleanly. The first SIGINT (Ctrl-C) only sets
    ``requested``, so that the sweep stops once the group in progress has its rows; a second SIGINT, and
    SIGTERM or SIGHUP at any time, raise ``Stopped`` at once (the group in progress gets no rows, and a resume
    runs it). Nothing is installed outside the main thread, nor for a signal ignored or handled outside
    Python (``nohup`` ignores SIGHUP: it stays ignored)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGINT or self.requested:
            raise Stopped(signum)
        self.requested = True
        # os.write, not print: a handler may run in the middle of a write to sys.stderr (the progress bar's)
        os.write(2, b"\ninterrupt: the sweep stops once the case in progress has its row "
                    b"(Ctrl-C again stops at once)\n")


def rearm_sigint() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt) where this process inherited it ignored (a shell's
    ``trap '' INT``, a background job of a script, a parent's ``preexec_fn``): otherwise Ctrl-C could not
    stop a sweep. Only the main thread can set a handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
