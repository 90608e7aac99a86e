"""Sweeps on a Ray cluster (``run_bench.py --workers N``, ``--ray-address``): one task per comparison group.

The cases of a comparison group are timed together in paired rounds in one process (that is what makes
their speedup ratios trustworthy), so the unit of work is a group, never a single case: one Ray task per
group, with a GPU of its own on CUDA (``num_gpus=1``: two groups never share a GPU) or its share of the
cores on the CPU. The tasks return their rows to the sweep's process, which alone writes them
(``run_sweep``). Ray runs a task whose worker died (a killed process, a lost node) again, up to
``retries`` times; after that each case of the group gets an ``error`` row that says so.

Ray is imported only here, and this module only when a sweep asks for Ray.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from typing import Any, Callable, Iterator

import ray
import torch

from bench.core.machine import environment, numerics_now
from bench.execution.runner import Group, run_here
from bench.suites.base import GroupRunner, RunContext
from bench.suites.rows import stamped


def driver_paths() -> dict[str, Any]:
    """A runtime environment in which workers import from the driver's ``sys.path``: on a local cluster the
    modules that registered extra families or backends (a researcher's own, beside the script) import in
    the workers as they did in the driver. (On a remote cluster they must be installed on every node.)"""
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}}


def start(address: str | None, cpus: int) -> None:
    """Connect this process to the cluster at ``address`` (``auto`` or ``HOST:PORT``), or start a local
    cluster of ``cpus`` CPUs and the GPUs Ray finds, for this process alone (``driver_paths``).
    ConnectionError at once when nothing answers at HOST:PORT (Ray itself would try for minutes)."""
    if address is None:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env=driver_paths())
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except OSError as exc:
            raise ConnectionError(f"nothing answers at {address} ({exc})") from None
    ray.init(address=address, logging_level=logging.WARNING)


def stop() -> None:
    """Disconnect (a local cluster ends with it)."""
    ray.shutdown()


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


@functools.cache
def node_environment() -> tuple[str, dict[str, Any]]:
    """This node's hostname and environment (GPU model, driver, CUDA, torch, triton...), once per process (its
    numerics as they were then: ``run_group_task`` reports them as they are)."""
    return socket.gethostname(), environment()


def run_group_task(run: GroupRunner, group: Group, ctx: RunContext,
                   threads: int | None) -> tuple[list[dict[str, Any]], str, dict[str, Any]]:
    """The Ray task: ``group``'s rows (on ``threads`` intra-op threads when given), this node's name and
    environment."""
    if threads is not None:
        torch.set_num_threads(threads)
    rows = run_here(run, group, ctx)
    node, node_env = node_environment()
    return rows, node, {**node_env, **numerics_now()}


class RayExecutor:
    """``run_sweep``'s executor on the Ray cluster this process is connected to (``start``).

    At most ``workers`` groups run at once, each a task with one GPU (``device`` cuda) or ``threads``
    CPUs (cpu); a new one starts when one completes, so none starts after the sweep stops.
    ``retries``: Ray's ``max_retries``, runs again of a task whose worker died. ``lost_row(case, ctx)``:
    the start of a case's row (``base_row``, ``base_model_row``), for the error rows of a group whose
    every try was lost. ``nodes`` gathers each node's environment as its first rows come back, and
    ``on_node(node, environment)`` is called then.
    """

    def __init__(self, device: str, workers: int, retries: int, lost_row: Callable[[Any, RunContext], dict],
                 threads: int | None = None, on_node: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": threads}
        self.workers, self.retries, self.lost_row = workers, retries, lost_row
        self.threads = None if device == "cuda" else threads
        self.on_node = on_node
        self.nodes: dict[str, dict[str, Any]] = {}

    def __call__(self, groups: Iterator[Group], run: GroupRunner,
                 ctx: RunContext) -> Iterator[tuple[Group, list[dict[str, Any]]]]:
        # Ray gives a task with GPUs a fresh worker process each time (max_calls=1), so that no CUDA
        # context or cached memory carries over to the next group, which may have another GPU.
        task = ray.remote(max_retries=self.retries, **self.resources)(run_group_task)
        shared_ctx = ray.put(ctx)
        running: dict[ray.ObjectRef, Group] = {}

        def fill() -> None:
            while len(running) < self.workers and (group := next(groups, None)) is not None:
                running[task.remote(run, group, shared_ctx, self.threads)] = group

        fill()
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            group = running.pop(done)
            yield group, self._rows(done, group, ctx)
            fill()

    def _rows(self, done: ray.ObjectRef, group: Group, ctx: RunContext) -> list[dict[str, Any]]:
        try:
            rows, node, node_env = ray.get(done)
        except ray.exceptions.RayTaskError:
            raise  # the group's own code raised (cases' errors are rows already): as it would in-process
        except ray.exceptions.RayError as exc:  # the worker or its node was lost on every try
            tries = self.retries + 1
            first_line = (str(exc).strip().splitlines() or [""])[0]
            detail = f"worker died {tries} time{'s' if tries > 1 else ''}: {type(exc).__name__}: {first_line}"
            return [stamped({**self.lost_row(case, ctx), "status": "error", "status_detail": detail})
                    for case in group.cases]
        if node not in self.nodes:
            self.nodes[node] = node_env
            if self.on_node is not None:
                self.on_node(node, node_env)
        return rows
