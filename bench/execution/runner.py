"""Running a sweep: every planned case that has no row yet, group by group, each row appended durably as its
group completes; executors that run the groups here or elsewhere (``bench.execution.cluster``)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from bench.core.machine import cpu_name
from bench.schema.files import completed_case_keys, ResultsWriter
from bench.suites import suite_of
from bench.suites.base import GroupRunner, RunContext


def placement(device: str) -> dict[str, Any]:
    """Where this process runs a case: the node's hostname, the process (``pid N``), the GPU as the node
    numbers it (``CUDA_VISIBLE_DEVICES``' entry for the current device when set, else its index; empty on
    the CPU) and the device's own name."""
    where = {"node": socket.gethostname(), "worker": f"pid {os.getpid()}", "gpu_index": None,
             "device_name": cpu_name()}
    if device == "cuda":
        index = torch.cuda.current_device()
        visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
        where.update(gpu_index=visible[index] if index < len(visible) else str(index),
                     device_name=torch.cuda.get_device_name(index))
    return where


@dataclass
class Group:
    """A comparison group's cases that have no row yet, and the companions timed with them (see ``run_sweep``)."""

    cases: list[Any]
    companions: list[Any]


# Runs the groups it pulls from an iterator and yields each with its rows as it completes. It pulls a group
# only when it can start it, so that a sweep that stops (the iterator ends) starts nothing more.
Executor = Callable[[Iterator[Group], GroupRunner, RunContext], Iterator[tuple[Group, list[dict[str, Any]]]]]


@dataclass(frozen=True)
class RetryNoisy:
    """A group runner that re-times a group's noisy cases, beside their references (compiled ones too), up to
    ``retries`` more times, and keeps each case's last row (``--retry-noisy``): noise on a shared machine comes and
    goes, and a later attempt is as fair a measurement as the first, not a chosen one. A re-timed row says so."""

    run: GroupRunner
    retries: int

    def __call__(self, cases: Sequence[Any], ctx: RunContext, companions: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows = {case.key: row for case, row in zip(cases, self.run(cases, ctx, companions))}
        for attempt in range(1, self.retries + 1):
            noisy = [case for case in cases if rows[case.key]["status"] == "noisy"]
            if not noisy:
                break
            keys = {case.key for case in noisy}
            references = {reference.key: reference for case in noisy
                          for reference in suite_of(noisy).references(case, cases)}
            again = self.run(noisy, ctx, [case for key, case in references.items() if key not in keys])
            for case, row in zip(noisy, again):
                note = f"re-timed {attempt}× (--retry-noisy): the earlier attempts were noisy"
                rows[case.key] = {**row, "status_detail": "; ".join(filter(None, [note, row.get("status_detail")]))}
        return [rows[case.key] for case in cases]


def run_here(run: GroupRunner, group: Group, ctx: RunContext) -> list[dict[str, Any]]:
    """``run``'s rows for ``group`` in this process, each saying where it ran (``placement``)."""
    where = placement(group.cases[0].device)
    rows = run(group.cases, replace(ctx, device_name=where["device_name"]), group.companions)
    return [{**row, **where} for row in rows]


def in_process(groups: Iterator[Group], run: GroupRunner, ctx: RunContext) -> Iterator[tuple[Group, list[dict]]]:
    """``run_sweep``'s default executor: one group after the other, in this process."""
    for group in groups:
        yield group, run_here(run, group, ctx)


def run_sweep(cases: Sequence[Any], ctx: RunContext, results_path: Path,
              progress: Callable[[Any, bool], None] | None = None,
              run: GroupRunner | None = None, stop_at: float | None = None,
              starting: Callable[[Sequence[Any]], None] | None = None,
              should_stop: Callable[[], bool] | None = None,
              executor: Executor = in_process) -> tuple[int, int]:
    """Run every case that has no row yet in ``results_path``, appending each row durably.

    The cases' suite (``bench.suites.suite_of``) says how: its groups are timed together in paired rounds,
    and ``run(cases, ctx, companions)`` (by default the suite's ``run_group``) makes the rows of a group's
    cases that have none yet; ``companions`` are the references of those cases that already have a row,
    timed again for the pairing (the eager reference and the compiled ones: ``Suite.references``).
    ``executor`` runs the groups: ``in_process`` one after the other, ``bench.execution.cluster.RayExecutor``
    several at once on a Ray cluster; either way this process alone writes the rows, in the order the
    groups complete, and never a case's row twice.
    ``progress(case, already_done)`` is called once per case with a row: first for every case whose
    row was already there (before any case runs), then for each case once its row is written;
    ``starting(cases)`` just before a group's cases start. No group starts once ``time.monotonic()``
    passes ``stop_at`` or ``should_stop()`` is true (the groups running then finish and are written):
    its cases have no row, so a resume runs them.
    Returns (cases run now, cases skipped because a row for them was already there).
    """
    suite = suite_of(cases)
    run = run or suite.run_group
    writer = ResultsWriter(results_path, suite.columns)  # first: it cuts a half-written last row
    written = completed_case_keys(results_path)
    skipped = 0
    for case in cases:
        if case.key in written:
            skipped += 1
            if progress is not None:
                progress(case, True)

    def pending() -> Iterator[Group]:
        for members in suite.groups(cases):
            todo = [case for case in members if case.key not in written]
            if not todo:
                continue
            if (stop_at is not None and time.monotonic() >= stop_at) or (should_stop is not None and should_stop()):
                return  # out of time, or interrupted: no row, so a resume runs them
            todo_keys = {case.key for case in todo}
            wanted = {reference.key for case in todo for reference in suite.references(case, members)}
            companions = [case for case in members if case.key in written and case.key not in todo_keys
                          and case.key in wanted]
            if starting is not None:
                starting(todo)
            yield Group(todo, companions)

    ran = 0
    for group, rows in executor(pending(), run, ctx):
        for case, row in zip(group.cases, rows):
            if case.key in written:
                continue  # one row per case, whatever an executor hands back
            writer.append(row)
            written.add(case.key)
            ran += 1
            if progress is not None:
                progress(case, False)
    return ran, skipped
