"""Commands that the session runs in the background, one after another, on the core that its tests leave idle.

The suite runs on one intra-op thread (conftest.py), so on a 2-core machine one core is mostly idle. The
expensive real runs that a module's tests only read afterwards (a sweep, a report, pytest's collection) need
nothing from the test process: a module registers, for such a fixture, a builder of the commands it needs
(``@background("fixture_name")``); once collection has chosen the tests, conftest.py starts the commands of every
chosen test's fixtures (``schedule``), in the order the tests come, and the fixture takes their results with
``finished``, waiting only if they are not done yet. Run alone (no session scheduled them) the fixture runs them
itself, in the foreground: the tests see the same thing either way.

A plain module, not a conftest, as reference_helpers.py is: the test files import it by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest


# The jobs run at a lower priority than the tests: they take the idle core, and yield it to a test that starts
# processes of its own (a Ray cluster's workers, a sweep it signals).
NICE = 10


@dataclass
class Job:
    """One command: where it runs, with what environment; once run, its exit status and output (stdout and
    stderr together)."""

    command: list[str]
    cwd: Path
    env: dict[str, str] | None = None
    timeout: float = 900
    returncode: int | None = None
    output: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    process: subprocess.Popen | None = None

    def run(self) -> None:
        try:
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)
            with contextlib.suppress(OSError):  # (not preexec_fn, which is unsafe beside other threads)
                os.setpriority(os.PRIO_PROCESS, self.process.pid, NICE)
            self.output, _ = self.process.communicate(timeout=self.timeout)
            self.returncode = self.process.returncode
        except Exception as exc:  # noqa: BLE001 - the fixture reports it
            self.returncode, self.output = -1, f"{self.output}{type(exc).__name__}: {exc}"
        finally:
            self.stop()
            self.done.set()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# fixture name -> builder(param, folder) -> the named jobs of that fixture (param: the fixture's parameter, or None)
Builder = Callable[[Any, Path], dict[str, Job]]
BUILDERS: dict[str, Builder] = {}


def background(fixture: str) -> Callable[[Builder], Builder]:
    """Register ``builder`` as the commands of ``fixture`` (a module-scoped fixture of the registering module)."""
    def register(builder: Builder) -> Builder:
        BUILDERS[fixture] = builder
        return builder
    return register


class Scheduled:
    """The session's jobs by (fixture, param), their folders, and the thread that runs them in order."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, Any], dict[str, Job]] = {}
        self.folders: list[Path] = []
        self.thread: threading.Thread | None = None
        self.stopped = False

    def add(self, fixture: str, param: Any) -> None:
        if (fixture, param) not in self.jobs:
            folder = Path(tempfile.mkdtemp(prefix=f"background-{fixture}-"))
            self.folders.append(folder)
            self.jobs[(fixture, param)] = BUILDERS[fixture](param, folder)

    def start(self) -> None:
        order = [job for jobs in self.jobs.values() for job in jobs.values()]

        def run_all() -> None:
            for job in order:
                if self.stopped:
                    job.returncode, job.output = -1, "the session ended first"
                    job.done.set()
                else:
                    job.run()

        if order:
            self.thread = threading.Thread(target=run_all, name="background jobs", daemon=True)
            self.thread.start()

    def close(self) -> None:
        """End what still runs (a session cut short) and remove the jobs' folders."""
        self.stopped = True
        if self.thread is not None:
            while self.thread.is_alive():
                for jobs in self.jobs.values():
                    for job in jobs.values():
                        job.stop()
                self.thread.join(timeout=1)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


SCHEDULED = pytest.StashKey[Scheduled]()


def schedule(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the jobs of the chosen tests' registered fixtures, in the order of the tests (conftest.py)."""
    scheduled = Scheduled()
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in BUILDERS:
                callspec = getattr(item, "callspec", None)
                scheduled.add(name, callspec.params.get(name) if callspec is not None else None)
    config.stash[SCHEDULED] = scheduled
    scheduled.start()


def unschedule(config: pytest.Config) -> None:
    scheduled = config.stash.get(SCHEDULED, None)
    if scheduled is not None:
        scheduled.close()


def finished(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """The requesting fixture's jobs, run: by the session's background thread (waiting for them if need be), or
    here and now if the session did not schedule them. Each job's exit status is left to the fixture to judge."""
    fixture, param = request.fixturename, getattr(request, "param", None)
    scheduled = request.config.stash.get(SCHEDULED, None)
    jobs = scheduled.jobs.get((fixture, param)) if scheduled is not None else None
    if jobs is None:
        jobs = BUILDERS[fixture](param, tmp_path_factory.mktemp(fixture))
        for job in jobs.values():
            job.run()
    for job in jobs.values():
        assert job.done.wait(timeout=job.timeout + 60), f"{fixture}: {job.command} did not finish"
    return jobs


def user_env(**extra: str) -> dict[str, str]:
    """A user's environment (without the Triton interpreter that conftest.py turns on here), one intra-op thread
    per process, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env
